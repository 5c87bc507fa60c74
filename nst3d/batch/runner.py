"""Running a batch: every job not finished yet goes to an executor (executors.py: a local thread pool or Ray
tasks), each as one `nst3d` subprocess (execute.py) whose results appear only when it succeeds. So a finished job
is exactly a folder with a job.json in it, a re-run skips those, and Ctrl-C or a killed worker loses at most the
jobs in flight.

The driver retries transient failures (crashes, lost workers), and timed-out jobs when asked, and records the
permanent ones (bad input: exit 2; out of memory: exit 3) without stopping the rest. summary.json lists them all.
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nst3d.batch.execute import DONE_FILE
from nst3d.batch.executors import LocalExecutor, RayExecutor
from nst3d.batch.jobs import Job
from nst3d.errors import UserError
from nst3d.files import write_json
from nst3d.pipelines.report import read_report

SUMMARY_FILE = "summary.json"
SHEET_FILE = "contact_sheet.png"
PROBLEMS = ("failed", "out of memory", "timed out")  # statuses that make the batch exit 1


def run_batch(jobs: list[Job], root: Path, executor: LocalExecutor | RayExecutor, retries: int = 2,
              force: bool = False, on_job: Callable[[dict[str, Any]], None] | None = None,
              retry_timeouts: bool = False) -> dict[str, Any]:
    """Run every job not already finished under root; returns (and writes) the summary.

    retries: re-runs of a job after a transient failure (and after a timeout when retry_timeouts);
    on_job(record) is called as each job ends (done, skipped, failed, out of memory or timed out).
    """
    started = time.perf_counter()
    for stale in root.glob(".*.part"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    records: dict[str, dict[str, Any]] = {}
    futures: dict[cf.Future, tuple[Job, int]] = {}
    for job in jobs:
        if not force and (root / job.folder / DONE_FILE).is_file():
            records[job.folder] = _record(job, root, "skipped", attempts=0)
            (on_job or _ignore)(records[job.folder])
        else:
            futures[executor.submit(job)] = (job, 1)
    interrupted = False
    try:
        while futures:
            finished, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                job, attempt = futures.pop(future)
                outcome = _outcome(future)
                if _retryable(outcome, retry_timeouts) and attempt <= retries:
                    futures[executor.submit(job)] = (job, attempt + 1)
                    continue
                records[job.folder] = _record(job, root, outcome["status"], attempt, outcome)
                (on_job or _ignore)(records[job.folder])
    except KeyboardInterrupt:
        interrupted = True
        for future in futures:
            future.cancel()
        executor.cancel_all()
        raise
    finally:
        executor.shutdown()
        for job in jobs:  # jobs that never ended are listed too; one whose result folder appeared is done
            if job.folder not in records:
                done = (root / job.folder / DONE_FILE).is_file()
                status = "done" if done else "interrupted" if interrupted else "not run"
                records[job.folder] = _record(job, root, status, int(done))
        summary = _summary(jobs, records, executor.description, time.perf_counter() - started, interrupted)
        write_json(summary, root / SUMMARY_FILE)
    return summary


def _ignore(record: dict[str, Any]) -> None:
    pass


def _retryable(outcome: dict[str, Any], retry_timeouts: bool) -> bool:
    """A crash or lost worker may go better next time; bad input and out-of-memory would not."""
    if outcome["status"] == "timed out":
        return retry_timeouts
    return outcome["status"] == "failed" and bool(outcome.get("transient"))


def _outcome(future: cf.Future) -> dict[str, Any]:
    """A job's outcome; a lost worker or a Ray error counts as a transient failure."""
    try:
        return future.result()
    except cf.CancelledError:
        return {"status": "failed", "error": "cancelled", "transient": False}
    except Exception as exc:  # noqa: BLE001 - whatever took the worker down, the batch carries on
        return {"status": "failed", "error": f"worker failed: {exc.__class__.__name__}: {str(exc)[:200]}",
                "transient": True}


def _record(job: Job, root: Path, status: str, attempts: int, outcome: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """One job's line in the summary, with its headline figures when it has a report."""
    finished = status in ("done", "skipped")
    record = {"line": job.line, "name": job.name, "backend": job.backend, "input": str(job.input),
              "status": status, "attempts": attempts,
              "folder": str((root / job.folder).resolve()) if finished else None}
    if outcome:
        record.update({k: outcome[k] for k in ("seconds", "error", "hint", "returncode", "host") if k in outcome})
    report_path = root / job.folder / "report.json"
    if record["folder"] and report_path.is_file():
        try:
            report = read_report(report_path)
            record["style_distance"], record["device"] = report.evaluation["style_distance"], report.device
            if "close_up" in report.evaluation:
                record["close_up_style_distance"] = report.evaluation["close_up"]["style_distance"]
        except UserError as exc:  # e.g. a folder finished by an older nst3d: the batch still sums up
            record["report_error"] = str(exc)
    return record


def _summary(jobs: list[Job], records: dict[str, dict[str, Any]], executor: str, seconds: float,
             interrupted: bool) -> dict[str, Any]:
    ordered = [records[job.folder] for job in jobs]
    counts: dict[str, int] = {}
    for record in ordered:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return {"executor": executor, "seconds": seconds, "interrupted": interrupted, "counts": counts, "jobs": ordered}


def preview_of(folder: Path) -> Path | None:
    """The picture that best shows a finished job: its contact sheet, else its first PNG."""
    sheet = folder / "contact_sheet.png"
    if sheet.is_file():
        return sheet
    pictures = sorted(folder.glob("*.png"))
    return pictures[0] if pictures else None


def batch_contact_sheet(summary: dict[str, Any], path: Path, tile: tuple[int, int] = (128, 512),
                        limit: int = 100) -> Path | None:
    """One row per job (first `limit`): its preview letterboxed into a tile, or a pale red tile if it failed."""
    import torch

    from nst3d.files import load_image
    from nst3d.preview import contact_sheet

    rows, labels = [], []
    for record in summary["jobs"][:limit]:
        canvas = torch.ones(3, *tile)
        picture = preview_of(Path(record["folder"])) if record["folder"] else None
        if picture is not None:
            image = load_image(picture)[0]
            scale = min(tile[0] / image.shape[1], tile[1] / image.shape[2])
            size = (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[2] * scale)))
            image = torch.nn.functional.interpolate(image[None], size=size, mode="area")[0]
            canvas[:, : size[0], : size[1]] = image
        elif record["status"] != "done":
            canvas *= torch.tensor([1.0, 0.85, 0.85]).view(3, 1, 1)
        rows.append(canvas[None])
        labels.append(f"{record['name']} ({record['status']})")
    return contact_sheet(rows, path, labels) if rows else None


def install_sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C in the driver, so a stopped batch cleans up its children the same way."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
