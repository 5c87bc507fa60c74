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
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

Event = dict[str, Any]

#: Seconds between SIGTERM and SIGKILL when cancelling.
CANCEL_GRACE_S = 5.0
INTERPRETER_ENV = "NST3D_PYTHON"
WHERE_TO_SET = "set it in Preferences > Add-ons > nst3d Style Transfer > Python"


class WorkerError(Exception):
    """A readable, one-line reason why a job could not run or did not finish."""


def find_interpreter(configured: str = "", managed: str = "") -> tuple[str, str]:
    """(path to a Python that has nst3d, how it was found). Raises WorkerError with what to do.

    Order: the configured path, $NST3D_PYTHON, `managed` (the environment "Set up nst3d" made, if any),
    Blender's own Python when nst3d is importable there, the interpreter of an `nst3d` console script on PATH.
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
    if managed and Path(managed).is_file():
        return managed, "set up by the add-on"
    if importlib.util.find_spec("nst3d") is not None and sys.executable:
        return sys.executable, "Blender's own Python"
    script = shutil.which("nst3d")
    if script and (python := _shebang_interpreter(Path(script))):
        return python, f"the nst3d command on PATH ({script})"
    raise WorkerError("no Python with nst3d found: press \"Set up nst3d\" in the add-on preferences (or install "
                      f"nst3d[mesh] into a Python 3.11+ and {WHERE_TO_SET})")


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


class BackgroundProcess:
    """One subprocess (argument list, no shell) whose output is read on threads, so that the caller (Blender's
    main thread, on a timer) never blocks: `drain_lines()` returns the stdout lines received so far, `poll()`
    the exit status once it has ended. stderr is kept as a tail; `log_file` gets stderr (and stdout too with
    `log_stdout`)."""

    def __init__(self, argv: list[str], python: str, cwd: str | None = None, log_file: Path | None = None,
                 log_stdout: bool = False, own_group: bool = False):
        self.python = python
        self.argv = argv
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._log = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115 - closed in close()
        self._log_stdout = log_stdout
        # own_group (POSIX): the process leads a new process group, so cancel() also stops what it started
        # (pip's build steps, ensurepip), not just the process itself.
        self._group = own_group and os.name == "posix"
        self.proc = _popen(argv, cwd, python, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           encoding="utf-8", errors="replace", bufsize=1, start_new_session=self._group)
        self._cancel_at: float | None = None
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
            if self._log is not None and self._log_stdout:
                self._log.write(line)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))
            if self._log is not None:
                self._log.write(line)

    def drain_lines(self) -> list[str]:
        """Every stdout line received since the last call (never blocks)."""
        drained = []
        while True:
            try:
                drained.append(self.lines.get_nowait())
            except queue.Empty:
                return drained

    def cancel(self) -> None:
        """Ask the process to stop (SIGTERM); SIGKILL after a grace period (see poll)."""
        if self.proc.poll() is None and self._cancel_at is None:
            self._cancel_at = time.monotonic()
            self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        try:
            if self._group:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass

    @property
    def cancelling(self) -> bool:
        return self._cancel_at is not None

    def poll(self) -> int | None:
        """The exit status once the process has ended and its pipes are read to the end, else None."""
        if self._cancel_at is not None and self.proc.poll() is None \
                and time.monotonic() - self._cancel_at > CANCEL_GRACE_S:
            self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))
        if self.proc.poll() is None or any(r.is_alive() for r in self._readers):
            return None
        return self.proc.returncode

    def close(self) -> None:
        """Stop the process if it still runs, and release its pipes and log."""
        if self.proc.poll() is None:
            self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))
            self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=2)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None


class WorkerProcess(BackgroundProcess):
    """One running `nst3d worker JOB.json`; `drain()` returns its events (main thread, never blocks)."""

    def __init__(self, python: str, job_file: Path, log_file: Path | None = None):
        if log_file is not None:
            log_file.write_text("", encoding="utf-8")
        super().__init__([python, "-m", "nst3d", "worker", str(job_file)], python, str(job_file.parent), log_file)

    def drain(self) -> list[Event]:
        """Every event received since the last call."""
        return parse_lines(self.drain_lines())


def check_argv(python: str, device: str = "auto", weights: str = "") -> list[str]:
    """The worker's `--check` command line."""
    argv = [python, "-m", "nst3d", "worker", "--check", "--device", device]
    return argv + ["--weights", weights] if weights else argv


def check_report(python: str, returncode: int, stdout_lines: list[str], stderr_tail: list[str]) -> Event:
    """The report of a finished `--check` run, or WorkerError with why there is none."""
    report = next((e for e in parse_lines(stdout_lines) if e.get("event") == "check"), None)
    if report is None:
        raise WorkerError(explain_exit(python, returncode, stderr_tail[-20:]))
    return report
