"""One job, run to its end: an `nst3d` subprocess (in a process group of its own) that writes into a hidden
`.NAME.part` folder, renamed to its final name only when the job succeeds.

The same `execute_job` runs in a local worker thread or as a Ray task. Its outcome says how the job ended:
  done            the result folder is in place
  failed          bad input (exit 2) or cancelled (130): permanent; a crash or a signal: transient (retried)
  out of memory   exit 3: permanent, the same settings would run out again (the error carries a hint)
  timed out       ran past the job timeout: its whole process group was killed (retried only if asked)
Anything but done leaves nothing of the job in the results folder.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nst3d import __version__
from nst3d.batch.jobs import Job
from nst3d.files import map_json, write_json

DONE_FILE = "job.json"
USER_ERROR_CODES = (2, 130)  # bad input, cancelled: retrying cannot help
OUT_OF_MEMORY_CODE = 3
OUT_OF_MEMORY_HINT = ("the same settings would run out again, so it is not retried: lower this row's size, "
                      "style_size or views, or run fewer jobs per GPU (--workers, --gpus-per-job)")
PIPE_GRACE_SECONDS = 10.0  # after killing a job's group, how long to wait for its output pipes to close


def nst3d_program() -> list[str]:
    """The command that runs `nst3d` here: this Python with `-m nst3d` (on a Ray node, the node's own)."""
    return [sys.executable, "-m", "nst3d"]


def _start_job_process() -> None:
    """In the child, before exec: lead a process group of its own (so a timeout or Ctrl-C can stop the job and
    every process it started) and get SIGKILL when the parent dies (Linux), so no job outlives its worker."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def kill_job_group(proc: subprocess.Popen) -> None:
    """SIGKILL the job's whole process group (the job and any child it started); quiet if it is gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class JobProcesses:
    """The job processes a local runner has started, so that Ctrl-C can stop them all. Once stopped, a job that
    starts afterwards (its worker thread was already on its way) is stopped as soon as it is registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopped = False

    def add(self, proc: subprocess.Popen) -> bool:
        """Register a started job; False (and the job is not registered) once stop_all has run."""
        with self._lock:
            if not self.stopped:
                self._running.add(proc)
            return not self.stopped

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def stop_all(self) -> None:
        """Kill every registered job's process group, and any job registered from now on."""
        with self._lock:
            self.stopped = True
            running = list(self._running)
        for proc in running:
            kill_job_group(proc)


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    """Kill the job's process group and collect what it printed. A process that left the group and still holds
    the output pipes is not waited for: the pipes are dropped and only the job itself is reaped."""
    kill_job_group(proc)
    try:
        return proc.communicate(timeout=PIPE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        return "", ""


def execute_job(job_data: dict[str, Any], out_root: str, env: dict[str, str] | None = None,
                processes: JobProcesses | None = None, timeout: float | None = None,
                program: list[str] | None = None, driver_version: str | None = None) -> dict[str, Any]:
    """Run one job to the end and return its outcome (module docstring); the result folder appears only on success.

    job_data: Job.to_dict(); env: environment on top of this process's (e.g. CUDA_VISIBLE_DEVICES); processes: a
    registry the local runner uses to stop jobs on Ctrl-C; timeout: seconds before the job's process group is
    killed; program: the command before the job's arguments (default nst3d_program()); driver_version: the nst3d
    version of the batch's driver: a node running another one refuses the job. Runs unchanged in a thread or as a
    Ray task.
    """
    job = Job.from_dict(job_data)
    host = socket.gethostname()
    if driver_version is not None and driver_version != __version__:
        return {"status": "failed", "transient": False, "host": host, "seconds": 0.0,
                "error": f"node {host} runs nst3d {__version__} but the driver runs nst3d {driver_version}; install "
                         "the same nst3d version on every node"}
    root = Path(out_root)
    final, part = root / job.folder, root / f".{job.folder}.part"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    started = time.perf_counter()
    args = job.argv(part)
    proc = subprocess.Popen([*(program or nst3d_program()), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, preexec_fn=_start_job_process)
    timed_out = False
    try:
        if processes is not None and not processes.add(proc):  # the batch was cancelled as this job started
            kill_job_group(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = proc.poll() is None  # else the job ended and a child it left behind holds the pipes
            stdout, stderr = _stop(proc)
    except BaseException:
        _stop(proc)
        shutil.rmtree(part, ignore_errors=True)
        raise
    finally:
        if processes is not None:
            processes.discard(proc)
    outcome = {"returncode": proc.returncode, "seconds": time.perf_counter() - started, "host": host}
    if timed_out or proc.returncode != 0:
        shutil.rmtree(part, ignore_errors=True)
        return {**outcome, **_failure(stderr, proc.returncode, timeout if timed_out else None)}
    record = {**job.to_dict(), **outcome, "status": "done", "command": args,
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stdout": stdout.strip()[-2000:]}
    for report in part.rglob("*.json"):  # the job wrote paths in the hidden folder, renamed below
        write_json(_moved(json.loads(report.read_text()), part, final), report)
    write_json(_moved(record, part, final), part / DONE_FILE)
    if final.exists():  # an older result for the same key without its job.json: replace it
        shutil.rmtree(final)
    os.rename(part, final)
    return {**outcome, "status": "done"}


def _failure(stderr: str, returncode: int, timeout: float | None) -> dict[str, Any]:
    """status, error and whether retrying could help, for a job that did not succeed."""
    if timeout is not None:
        return {"status": "timed out", "transient": False,
                "error": f"still running after the job timeout ({timeout:g} s); its processes were stopped"}
    error = _error_line(stderr, returncode)
    if returncode == OUT_OF_MEMORY_CODE:
        return {"status": "out of memory", "transient": False, "error": error, "hint": OUT_OF_MEMORY_HINT}
    return {"status": "failed", "error": error, "transient": returncode not in USER_ERROR_CODES}


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
