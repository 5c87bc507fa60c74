"""`nst3d batch JOBS -o RESULTS`: stylize many assets, locally or on a Ray cluster, resumably.

Options of the single-asset commands given here (e.g. --style s.jpg --steps 200 --size 256) apply to every
job; a job's own columns override them. Finished jobs are skipped on a re-run (same input, styles, options).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nst3d.batch.executors import LocalExecutor, RayExecutor
from nst3d.batch.jobs import load_jobs
from nst3d.batch.runner import (
    PROBLEMS,
    SHEET_FILE,
    SUMMARY_FILE,
    batch_contact_sheet,
    install_sigterm_as_interrupt,
    run_batch,
)
from nst3d.errors import UserError
from nst3d.files import check_output

EPILOG = """job list columns: input (required), style (a;b), style_weights (0.7;0.3), backend (mesh|splat|image|nerf,
inferred when empty), name, and any option of the backend's command (steps, size, loss, texture_size, ...).
Any other option on this command line is passed to every job, e.g. --style starry.jpg --steps 200.
Local jobs share this process's GPUs (its own CUDA_VISIBLE_DEVICES list), one job per GPU at a time.
Exit 1 when a job failed, ran out of memory (exit 3: not retried) or timed out; summary.json says which.
Ray: --ray auto joins the cluster of `ray start` (RAY_ADDRESS), --ray local starts one here, --ray ray://HOST:10001
connects to a remote head; inputs, styles and RESULTS must be on storage every node sees."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="stylize many assets from a job list (local or Ray)", description=__doc__,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs", type=Path, help="job list (.csv with a header, or .jsonl)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RESULTS", help="results folder")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: auto, local, or a cluster address")
    p.add_argument("--workers", type=int, help="local jobs at once (default: one per GPU, else 1)")
    p.add_argument("--cpus-per-job", type=float, default=1.0, help="Ray: CPUs each job asks for (default 1)")
    p.add_argument("--gpus-per-job", type=float, help="Ray: GPUs each job asks for (default 1 if the cluster has any; "
                   "0.5 shares a GPU between two jobs; 0 runs on the CPU)")
    p.add_argument("--retries", type=int, default=2,
                   help="re-runs of a job that crashed (not of bad input or out of memory)")
    p.add_argument("--job-timeout", type=float, metavar="SECONDS",
                   help="stop a job (and every process it started) after this long; recorded as timed out")
    p.add_argument("--retry-timeouts", action="store_true", help="re-run timed-out jobs too (up to --retries)")
    p.add_argument("--force", action="store_true", help="re-run finished jobs too")
    p.add_argument("--dry-run", action="store_true", help="check the job list and show what would run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run, pass_through=True)


def run(args: argparse.Namespace) -> int:
    from nst3d.cli import build_parser

    if (args.workers is not None and args.workers < 1) or args.retries < 0:
        raise UserError("--workers must be at least 1 and --retries not negative")
    if args.job_timeout is not None and not args.job_timeout > 0:
        raise UserError(f"--job-timeout must be a positive number of seconds, got {args.job_timeout:g}")
    if args.gpus_per_job is not None and args.gpus_per_job < 0:
        raise UserError("--gpus-per-job must not be negative (0 runs every job on the CPU)")
    root = check_output(args.output, [args.jobs], is_dir=True)
    jobs = load_jobs(args.jobs, list(args.extra), build_parser())
    done = sum((root / job.folder / "job.json").is_file() for job in jobs) if not args.force else 0
    print(f"{len(jobs)} jobs checked ({done} already finished)", file=sys.stderr)
    if args.dry_run:
        for job in jobs:
            print(f"line {job.line}: {job.backend} {job.input} -> {root / job.folder}")
        return 0
    install_sigterm_as_interrupt()
    executor = (RayExecutor(root, args.ray, args.cpus_per_job, args.gpus_per_job, args.job_timeout) if args.ray
                else LocalExecutor(root, args.workers, timeout=args.job_timeout))
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc="jobs", unit="job", disable=args.quiet, file=sys.stderr) as bar:
        def on_job(record: dict) -> None:
            if record["status"] in PROBLEMS:
                hint = f" ({record['hint']})" if record.get("hint") else ""
                bar.write(f"line {record['line']} ({record['name']}): {record['status']}: {record.get('error')}{hint}",
                          file=sys.stderr)
            bar.update(1)
            bar.set_postfix(last=f"{record['name']} {record['status']}", refresh=True)

        try:
            summary = run_batch(jobs, root, executor, args.retries, args.force, on_job, args.retry_timeouts)
        except KeyboardInterrupt:  # not the CLI's "nothing was written": finished jobs stay, for a resume
            bar.close()
            print(f"\nnst3d: cancelled; finished jobs and {SUMMARY_FILE} are kept in {root}: the same command "
                  "resumes", file=sys.stderr)
            return 130
    sheet = batch_contact_sheet(summary, root / SHEET_FILE)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["counts"].items()))
    print(f"{counts} in {summary['seconds']:.0f} s ({executor.description}); wrote {root / SUMMARY_FILE}"
          + (f" and {sheet}" if sheet else ""))
    return 1 if any(summary["counts"].get(status) for status in PROBLEMS) else 0
