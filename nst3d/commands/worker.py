"""`nst3d worker JOB.json`: run one job described in JSON, streaming JSON-line events on stdout (what the
Blender add-on and the batch script launch). `nst3d worker --check` reports versions, device and weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nst3d.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run one JSON job and stream JSON-line events (for the Blender add-on)",
                       description=__doc__)
    p.add_argument("job", nargs="?", type=Path, help="job file (see nst3d.worker for the format)")
    p.add_argument("--check", action="store_true",
                   help="print one JSON line with versions, device and weights, then exit (0: ready, 2: not)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="the device to check (default auto), or to run the job on instead of its options' device")
    p.add_argument("--weights", help="VGG-19 weights file to check")
    p.add_argument("--parse-options", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="parse `nst3d mesh`-style options and print the job fields as one JSON line "
                        "(for scripts running in a Python without nst3d)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from nst3d import worker

    if args.parse_options is not None:
        parser = argparse.ArgumentParser(prog="nst3d worker --parse-options")
        worker.add_job_options(parser)
        fields = worker.job_fields_from_args(parser.parse_args(args.parse_options))  # exits 2 on bad options
        print(json.dumps({"event": "options", **fields}), flush=True)
        return 0
    if args.check:
        report = worker.check(args.device or "auto", args.weights)
        print(json.dumps(report), flush=True)
        return 0 if report["ok"] else 2
    if args.job is None:
        raise UserError("give a job file (nst3d worker JOB.json) or --check")
    return worker.run_job_file(args.job, device=args.device)
