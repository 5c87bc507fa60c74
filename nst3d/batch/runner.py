"""Running a batch: each job is one `nst3d` subprocess that writes into a hidden `.NAME.part` folder, renamed to
its final name only when the job succeeds. So a finished job is exactly a folder with a job.json in it, a re-run
skips those, and Ctrl-C or a killed worker loses at most the jobs in flight.

The same `execute_job` runs in a local thread pool (one worker per GPU, or per CPU share) or as a Ray task
(`--ray auto|local|ADDRESS`), with the resources each job asks for; the driver retries transient failures
(crashes, lost workers) and records permanent ones (bad input: exit code 2) without stopping the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nst3d.batch.jobs import Job
from nst3d.errors import UserError
from nst3d.files import map_json, write_json
from nst3d.pipelines.report import read_report

DONE_FILE = "job.json"
SUMMARY_FILE = "summary.json"
SHEET_FILE = "contact_sheet.png"
USER_ERROR_CODES = (2, 130)  # bad input, cancelled: retrying cannot help


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux), so no job outlives its worker."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def execute_job(job_data: dict[str, Any], out_root: str, env: dict[str, str] | None = None,
                processes: set[subprocess.Popen] | None = None) -> dict[str, Any]:
    """Run one job to the end and return its outcome; the result folder appears only on success.

    job_data: Job.to_dict(); env: extra environment (e.g. CUDA_VISIBLE_DEVICES); processes: a registry the
    local runner uses to kill children on Ctrl-C. Runs unchanged in a thread or as a Ray task.
    """
    job = Job.from_dict(job_data)
    root = Path(out_root)
    final, part = root / job.folder, root / f".{job.folder}.part"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    started = time.perf_counter()
    command = [sys.executable, "-m", "nst3d", *job.argv(part)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent)
    if processes is not None:
        processes.add(proc)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        shutil.rmtree(part, ignore_errors=True)
        raise
    finally:
        if processes is not None:
            processes.discard(proc)
    seconds = time.perf_counter() - started
    outcome = {"returncode": proc.returncode, "seconds": seconds, "host": socket.gethostname()}
    if proc.returncode != 0:
        shutil.rmtree(part, ignore_errors=True)
        return {**outcome, "status": "failed", "error": _error_line(stderr, proc.returncode),
                "transient": proc.returncode not in USER_ERROR_CODES}
    record = {**job.to_dict(), **outcome, "status": "done", "command": command[3:],
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stdout": stdout.strip()[-2000:]}
    for report in part.rglob("*.json"):  # the job wrote paths in the hidden folder, renamed below
        write_json(_moved(json.loads(report.read_text()), part, final), report)
    write_json(_moved(record, part, final), part / DONE_FILE)
    if final.exists():  # an older result for the same key without its job.json: replace it
        shutil.rmtree(final)
    os.rename(part, final)
    return {**outcome, "status": "done"}


def _moved(value: Any, old: Path, new: Path) -> Any:
    """JSON data with every path under `old` in its strings pointing under `new` instead."""
    return map_json(value, lambda v: v.replace(str(old), str(new)) if isinstance(v, str) else v)


def _error_line(stderr: str, returncode: int) -> str:
    """The job's one-line error, or a short description of a crash."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("nst3d: error:"):
            return line[len("nst3d: error:"):].strip()
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return lines[-1][-300:] if lines else f"exit code {returncode}"


class LocalExecutor:
    """Threads that each run one job subprocess at a time; GPUs are handed out one per running job."""

    def __init__(self, root: Path, workers: int | None = None):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.workers = workers or max(1, gpus)
        self.gpus: queue.Queue[int] | None = None
        if gpus:
            self.gpus = queue.Queue()
            for index in range(gpus):
                self.gpus.put(index)
        self.threads_per_job = max(1, (os.cpu_count() or 1) // self.workers)
        self.root = root
        self.pool = cf.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="nst3d-job")
        self.processes: set[subprocess.Popen] = set()
        self.description = f"local, {self.workers} worker(s)" + (f", {gpus} GPU(s)" if gpus else ", CPU")

    def _run(self, job: Job) -> dict[str, Any]:
        env = {"OMP_NUM_THREADS": str(self.threads_per_job), "MKL_NUM_THREADS": str(self.threads_per_job)}
        if self.gpus is None:
            return execute_job(job.to_dict(), str(self.root), env, self.processes)
        gpu = self.gpus.get()
        try:
            return execute_job(job.to_dict(), str(self.root), {**env, "CUDA_VISIBLE_DEVICES": str(gpu)},
                               self.processes)
        finally:
            self.gpus.put(gpu)

    def submit(self, job: Job) -> cf.Future:
        return self.pool.submit(self._run, job)

    def cancel_all(self) -> None:
        for proc in list(self.processes):
            proc.kill()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """One Ray task per job, asking for `cpus` CPUs and `gpus` GPUs (default: 1 if the cluster has any)."""

    def __init__(self, root: Path, address: str, cpus: float = 1.0, gpus: float | None = None):
        try:
            import ray
        except ImportError:
            raise UserError("--ray needs Ray: pip install 'ray>=2.9' (or nst3d[batch])") from None
        self.ray = ray
        self.started_here = address == "local"
        try:
            # address "local" always starts a new instance (never joins one that happens to be running).
            ray.init(address=address, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True, configure_logging=False)
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray cluster at '{address}': {exc}; start one with `ray start "
                            "--head` or use --ray local") from None
        resources = ray.cluster_resources()
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        self.remote = ray.remote(execute_job).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        self.root = root
        self.refs: dict[cf.Future, Any] = {}
        self.description = (f"ray ({'local' if self.started_here else address}), {resources.get('CPU', 0):g} CPUs, "
                            f"{resources.get('GPU', 0):g} GPUs; {cpus:g} CPU / {gpus:g} GPU per job")

    def submit(self, job: Job) -> cf.Future:
        ref = self.remote.remote(job.to_dict(), str(self.root))
        future = ref.future()
        self.refs[future] = ref
        return future

    def cancel_all(self) -> None:
        for ref in self.refs.values():
            self.ray.cancel(ref, force=True)

    def shutdown(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def run_batch(jobs: list[Job], root: Path, executor: LocalExecutor | RayExecutor, retries: int = 2,
              force: bool = False, on_job: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every job not already finished under root; returns (and writes) the summary.

    on_job(record) is called as each job ends (done, skipped or failed).
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
                if outcome["status"] == "failed" and outcome.get("transient") and attempt <= retries:
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
        for job in jobs:  # jobs that never ended are listed too
            records.setdefault(job.folder, _record(job, root, "interrupted" if interrupted else "not run", 0))
        summary = _summary(jobs, records, executor.description, time.perf_counter() - started, interrupted)
        write_json(summary, root / SUMMARY_FILE)
    return summary


def _ignore(record: dict[str, Any]) -> None:
    pass


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
        record.update({k: outcome[k] for k in ("seconds", "error", "returncode", "host") if k in outcome})
    report_path = root / job.folder / "report.json"
    if record["folder"] and report_path.is_file():
        try:
            record["style_distance"] = read_report(report_path).evaluation["style_distance"]
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
