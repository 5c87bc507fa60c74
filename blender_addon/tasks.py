"""Background tasks of the preferences (Check, Set up nst3d): a few commands run one after another as
subprocesses, polled by a `bpy.app.timers` function, so that Blender never waits on them (importing torch
takes seconds, an install minutes). Progress goes to WindowManager.nst3d (task_*), the outcome to the task's
`on_done`; Cancel stops the running command.

Standard library + bpy only; the processes are worker_process.BackgroundProcess (argument lists, no shell).
"""

from __future__ import annotations

import shlex
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from .worker_process import BackgroundProcess, WorkerError

TIMER_S = 0.2

#: The running task of each kind ("check", "setup"): at most one each.
RUNNING: dict[str, Task] = {}


@dataclass
class Step:
    """One command of a task. `weight`: its share of the progress bar; `expected_lines`: about how many output
    lines it prints when it succeeds (the bar advances with them), 0 for a step without a measure."""

    label: str
    argv: list[str]
    python: str
    weight: float = 1.0
    expected_lines: int = 0


@dataclass
class Task:
    """Steps run in order; the first that fails ends the task. Drive it with tick() on the main thread."""

    kind: str
    steps: list[Step]
    on_done: Callable[[Task], None]
    log_file: Path | None = None
    index: int = -1
    process: BackgroundProcess | None = None
    lines: deque = field(default_factory=lambda: deque(maxlen=2000))  # the current step's stdout
    line_count: int = 0
    returncode: int | None = None
    outcome: str = ""  # "", then "ok", "failed" or "cancelled"
    error: str = ""
    started: float = field(default_factory=time.monotonic)

    def start(self) -> Task:
        self._next()
        return self

    def _next(self) -> None:
        self.index += 1
        step = self.steps[self.index]
        self.lines.clear()
        self.line_count = 0
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as log:
                log.write(f"# {step.label}\n$ {shlex.join(step.argv)}\n")
        try:
            self.process = BackgroundProcess(step.argv, step.python, log_file=self.log_file, log_stdout=True,
                                             own_group=True)
        except WorkerError as exc:
            self.process = None
            self._end("failed", str(exc))

    @property
    def step(self) -> Step:
        return self.steps[max(0, self.index)]

    @property
    def finished(self) -> bool:
        return bool(self.outcome)

    def tick(self) -> bool:
        """Read the output so far, start the next step when one ends; True once the task has ended."""
        if self.finished:
            return True
        new = self.process.drain_lines()
        self.lines.extend(new)
        self.line_count += len(new)
        code = self.process.poll()
        if code is None:
            return False
        self.lines.extend(self.process.drain_lines())
        self.returncode = code
        cancelled = self.process.cancelling
        self.process.close()
        if cancelled:
            self._end("cancelled", "cancelled")
        elif code != 0:
            self._end("failed", "")
        elif self.index + 1 < len(self.steps):
            self._next()
        else:
            self._end("ok", "")
        return self.finished

    def _end(self, outcome: str, error: str) -> None:
        self.outcome, self.error = outcome, error
        self.on_done(self)

    @property
    def fraction(self) -> float:
        """0..1 over all steps (by weight), within a step by its output lines."""
        total = sum(s.weight for s in self.steps)
        done = sum(s.weight for s in self.steps[:max(0, self.index)])
        step = self.step
        within = min(0.95, self.line_count / step.expected_lines) if step.expected_lines else 0.0
        return 1.0 if self.outcome == "ok" else (done + within * step.weight) / total

    @property
    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"{self.step.label} ({self.index + 1}/{len(self.steps)}, {elapsed:.0f} s)"

    def cancel(self) -> None:
        if self.process is not None and not self.finished:
            self.process.cancel()

    def stderr_tail(self) -> list[str]:
        return list(self.process.stderr_tail) if self.process is not None else []


def start(task: Task) -> Task:
    """Start `task` and the timer that drives it; raises WorkerError when a task of its kind is running."""
    if task.kind in RUNNING:
        raise WorkerError(f"a {task.kind} is already running; cancel it first")
    if task.start().finished:  # its first command could not even start
        return task
    RUNNING[task.kind] = task
    if not bpy.app.timers.is_registered(_on_timer):
        bpy.app.timers.register(_on_timer, first_interval=TIMER_S)
    _publish()
    return task


def tick() -> bool:
    """Advance every running task (the timer's work; tests call it directly): True while any still runs."""
    for kind, task in list(RUNNING.items()):
        if task.tick():
            RUNNING.pop(kind, None)
    _publish()
    return bool(RUNNING)


def wait(timeout: float = 3600.0) -> None:
    """Block until every task has ended (scripts and background mode, where no timer fires)."""
    deadline = time.monotonic() + timeout
    while tick() and time.monotonic() < deadline:
        time.sleep(0.05)


def cancel(kind: str) -> bool:
    task = RUNNING.get(kind)
    if task is not None:
        task.cancel()
    return task is not None


def cancel_all() -> None:
    """Stop every task and forget them (the add-on is being disabled)."""
    for task in RUNNING.values():
        if task.process is not None:
            task.process.close()
    RUNNING.clear()
    if bpy.app.timers.is_registered(_on_timer):
        bpy.app.timers.unregister(_on_timer)


def _on_timer() -> float | None:
    return TIMER_S if tick() else None


def _publish() -> None:
    """The running tasks' progress into WindowManager.nst3d, and a redraw of the preferences."""
    wm = bpy.context.window_manager
    status = getattr(wm, "nst3d", None) if wm is not None else None
    if status is None:
        return
    for kind in ("check", "setup"):
        task = RUNNING.get(kind)
        setattr(status, f"{kind}_running", task is not None)
        setattr(status, f"{kind}_fraction", task.fraction if task else 0.0)
        setattr(status, f"{kind}_text", task.text if task else "")
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()
