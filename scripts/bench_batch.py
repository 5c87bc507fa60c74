"""Local scaling of `nst3d batch` (issue 7, item 6): the same job list run with 1 worker, then with 2 (or the
--workers given), side by side in one run, each into its own fresh results folder.

    python scripts/bench_batch.py --weights ../shared/weights/vgg19-caffe-conv1_1-conv3_4.pth
    python scripts/bench_batch.py --jobs 8 --workers 1 2 4 --ray      # also through a local Ray instance

The jobs are copies of the built-in sample scene (six textured objects in one GLB, nst3d.sample_scene) stylized
as meshes, so each job does real work (ray casting, texture pyramids, VGG) as a studio's mesh library would.
Each worker gets cpu_count / workers torch threads (the batch runner's rule), so on a
CPU-only machine the speed-up measures how well one job uses its threads vs how well jobs overlap.
Prints a Markdown table (wall seconds, jobs per minute, speed-up vs 1 worker); --json writes the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STYLE_SIZE = 96


def write_jobs(folder: Path, count: int) -> Path:
    """`count` copies of the sample scene (six textured objects in one GLB) and the sample style in `folder`;
    returns the jobs.csv naming them."""
    from nst3d.sample_scene import write_sample_scene
    from nst3d.samples import write_samples

    scene = write_sample_scene(folder / "scene.glb").read_bytes()
    _, style = write_samples(folder, size=STYLE_SIZE)
    lines = []
    for i in range(count):
        (folder / f"scene_{i}.glb").write_bytes(scene)
        lines.append(f"scene_{i}.glb,{style.name}\n")
    jobs = folder / "jobs.csv"
    jobs.write_text("input,style\n" + "".join(lines))
    return jobs


def run_batch(jobs: Path, results: Path, workers: int, ray: bool, extra: list[str]) -> float:
    """Wall seconds of one `nst3d batch` run (fails loudly if any job failed)."""
    cmd = [sys.executable, "-m", "nst3d", "batch", str(jobs), "-o", str(results), "--quiet", *extra]
    cmd += ["--ray", "local"] if ray else ["--workers", str(workers)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nst3d batch failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=6, help="number of jobs (default 6)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="local worker counts (default 1 2)")
    p.add_argument("--ray", action="store_true", help="also run through a local Ray instance")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--weights", help="VGG-19 weights (default: $NST3D_VGG19_WEIGHTS or the hub cache)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    extra = ["--steps", str(args.steps), "--size", str(args.size), "--texture-size", "256"]
    if args.weights:
        extra += ["--weights", str(Path(args.weights).resolve())]
    rows = []
    with tempfile.TemporaryDirectory(prefix="nst3d-bench-batch-") as tmp:
        jobs = write_jobs(Path(tmp), args.jobs)
        runs = [(f"local, {w} worker{'s' if w > 1 else ''}", w, False) for w in args.workers]
        runs += [("ray local", 0, True)] if args.ray else []
        for label, workers, ray in runs:
            seconds = run_batch(jobs, Path(tmp) / f"results-{len(rows)}", workers, ray, extra)
            rows.append({"run": label, "workers": workers, "seconds": seconds,
                         "jobs_per_minute": 60 * args.jobs / seconds})
            print(f"{label}: {seconds:.1f} s", file=sys.stderr, flush=True)
    base = rows[0]["seconds"]
    machine = platform.processor() or platform.machine()
    print(f"\n{args.jobs} mesh jobs ({args.size} px, {args.steps} steps); {machine}, {os.cpu_count()} CPUs, "
          f"{datetime.date.today()}\n")
    print("| run | wall s | jobs/min | speed-up vs first |\n|---|---|---|---|")
    for row in rows:
        row["speedup"] = base / row["seconds"]
        print(f"| {row['run']} | {row['seconds']:.1f} | {row['jobs_per_minute']:.2f} | {row['speedup']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"jobs": args.jobs, "steps": args.steps, "size": args.size, "runs": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
