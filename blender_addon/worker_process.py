"""The nst3d worker as a subprocess: find a Python that has nst3d, launch `python -m nst3d worker JOB.json`
(argument list, no shell), read its JSON-line events on a thread into a queue that the main thread drains.

Standard library only (no bpy, never torch): the add-on and the batch script both use it.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

Event = dict[str, Any]

#: Seconds between SIGTERM and SIGKILL when cancelling.
CANCEL_GRACE_S = 5.0
CHECK_TIMEOUT_S = 180.0
INTERPRETER_ENV = "NST3D_PYTHON"
WHERE_TO_SET = "set it in Preferences > Add-ons > nst3d Style Transfer > Python"


class WorkerError(Exception):
    """A readable, one-line reason why a job could not run or did not finish."""


def find_interpreter(configured: str = "") -> tuple[str, str]:
    """(path to a Python that has nst3d, how it was found). Raises WorkerError with what to do.

    Order: the configured path, $NST3D_PYTHON, Blender's own Python when nst3d is importable there,
    the interpreter of an `nst3d` console script on PATH.
    """
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise WorkerError(f"Python interpreter not found: {path}; {WHERE_TO_SET}")
        if not os.access(path, os.X_OK):
            raise WorkerError(f"{path} is not executable; {WHERE_TO_SET}")
        return str(path), "preferences"
    if env := os.environ.get(INTERPRETER_ENV):
        if not Path(env).is_file():
            raise WorkerError(f"${INTERPRETER_ENV} points to a missing file: {env}")
        return env, f"${INTERPRETER_ENV}"
    if importlib.util.find_spec("nst3d") is not None and sys.executable:
        return sys.executable, "Blender's own Python"
    script = shutil.which("nst3d")
    if script and (python := _shebang_interpreter(Path(script))):
        return python, f"the nst3d command on PATH ({script})"
    raise WorkerError("no Python with nst3d found: install it (pip install 'nst3d[mesh]') into a "
                      f"Python 3.10+ and {WHERE_TO_SET}")


def _shebang_interpreter(script: Path) -> str | None:
    try:
        with open(script, "rb") as fh:
            first = fh.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    candidate = first[2:].strip().split()[0] if first[2:].strip() else ""
    return candidate if candidate and Path(candidate).is_file() and "python" in Path(candidate).name else None


def worker_env(python: str) -> dict[str, str]:
    """The worker's environment: ours, minus Blender's Python home when another interpreter runs."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if Path(python).resolve() != Path(sys.executable).resolve():
        env.pop("PYTHONHOME", None)
    return env


def _popen(argv: list[str], cwd: str | None, python: str, **kwargs) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, cwd=cwd, env=worker_env(python), stdin=subprocess.DEVNULL,
                                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0), **kwargs)
    except OSError as exc:
        raise WorkerError(f"cannot run the Python interpreter {python}: {exc.strerror or exc}; "
                          f"{WHERE_TO_SET}") from None


def explain_exit(python: str, returncode: int, stderr_tail: list[str]) -> str:
    """One line saying why a worker ended without an event that explains it."""
    text = "\n".join(stderr_tail)
    if "No module named nst3d" in text or "No module named 'nst3d'" in text:
        return (f"the Python at {python} does not have nst3d installed: "
                f"run {python} -m pip install 'nst3d[mesh]'")
    if "No module named" in text:
        missing = text[text.rfind("No module named"):].splitlines()[0]
        return f"the worker's Python lacks a package ({missing}): pip install 'nst3d[mesh]' into {python}"
    last = next((line.strip() for line in reversed(stderr_tail) if line.strip()), "")
    if returncode < 0:
        return f"the worker was killed by signal {-returncode}{': ' + last if last else ''}"
    return f"the worker stopped unexpectedly (exit status {returncode}){': ' + last if last else ''}"


def check_worker(python: str, device: str = "auto", weights: str = "",
                 timeout: float = CHECK_TIMEOUT_S) -> Event:
    """Run `nst3d worker --check`; returns its report (with "ok") or raises WorkerError with the problem."""
    argv = [python, "-m", "nst3d", "worker", "--check", "--device", device]
    if weights:
        argv += ["--weights", weights]
    proc = _popen(argv, None, python, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                  encoding="utf-8", errors="replace")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise WorkerError(f"the check did not finish in {timeout:.0f} s "
                          f"(is {python} the right Python?)") from None
    report = next((e for e in parse_lines(out.splitlines()) if e.get("event") == "check"), None)
    if report is None:
        raise WorkerError(explain_exit(python, proc.returncode, err.splitlines()[-20:]))
    return report


def describe_check(report: Event) -> str:
    """A short human summary of a check report: versions, device, weights, then problems."""
    parts = [f"nst3d {report.get('nst3d', '?')}", f"Python {report.get('python', '?')}",
             f"torch {report.get('torch', 'missing')}"]
    if "device" in report:
        parts.append(f"device {report['device']}" + (f" ({report['gpu']})" if report.get("gpu") else ""))
    if report.get("weights"):
        parts.append(f"weights {Path(report['weights']).name} (to {report.get('layers')})")
    lines = [" | ".join(parts)]
    lines += [f"Problem: {p}" for p in report.get("problems", [])]
    lines += [f"Note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def parse_lines(lines) -> list[Event]:
    """JSON-object lines that carry an "event" key; anything else is ignored."""
    events = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


class WorkerProcess:
    """One running `nst3d worker JOB.json`. Threads only read pipes; `drain()` runs on the main thread."""

    def __init__(self, python: str, job_file: Path, log_file: Path | None = None):
        self.python = python
        self.argv = [python, "-m", "nst3d", "worker", str(job_file)]
        self.events: queue.Queue[Event] = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._log = open(log_file, "w", encoding="utf-8") if log_file else None  # noqa: SIM115 - closed in close()
        self.proc = _popen(self.argv, str(job_file.parent), python, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1)
        self._cancel_at: float | None = None
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            for event in parse_lines([line]):
                self.events.put(event)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))
            if self._log is not None:
                self._log.write(line)

    def drain(self) -> list[Event]:
        """Every event received since the last call (main thread; never blocks)."""
        drained = []
        while True:
            try:
                drained.append(self.events.get_nowait())
            except queue.Empty:
                return drained

    def cancel(self) -> None:
        """Ask the worker to stop (SIGTERM: it cancels and writes nothing); SIGKILL after a grace period."""
        if self.proc.poll() is None and self._cancel_at is None:
            self._cancel_at = time.monotonic()
            self.proc.terminate()

    @property
    def cancelling(self) -> bool:
        return self._cancel_at is not None

    def poll(self) -> int | None:
        """The exit status once the worker has ended and its pipes are read to the end, else None."""
        if self._cancel_at is not None and self.proc.poll() is None \
                and time.monotonic() - self._cancel_at > CANCEL_GRACE_S:
            self.proc.kill()
        if self.proc.poll() is None or any(r.is_alive() for r in self._readers):
            return None
        return self.proc.returncode

    def close(self) -> None:
        """Stop the worker if it still runs, and release its pipes and log."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=2)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None
