"""Progress events: plain dicts, written as JSON lines for machines (the Blender add-on reads them) or shown
as a tqdm bar for people. Standard library only, apart from the optional tqdm import."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

Event = dict[str, Any]
EventSink = Callable[[Event], None]


#: Set by the CLI's Ctrl-C handler (nst3d.cli); the stylization loop checks it before every step. Python raises
#: the KeyboardInterrupt wherever the main thread happens to be, and inside a finalizer it only prints "Exception
#: ignored" and carries on: the flag makes that Ctrl-C stop the loop at its next step all the same.
CTRL_C = threading.Event()


class Cancelled(KeyboardInterrupt):
    """The user asked to stop (Cancel button, Esc, or a stop callback); handled like Ctrl-C. Defined here (not
    in nst3d.stylize, which re-exports it) so that backends preparing views can raise it without the loop."""


def ignore(event: Event) -> None:
    """A sink that drops every event."""


class JsonLines:
    """Write each event as one JSON line and flush, so a reader sees it at once."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event, default=_jsonable)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class ProgressBar:
    """Show "progress" events as a tqdm bar with the current loss, a new bar whenever the stage changes (the
    per-view baseline runs one stage per view); "message" events as short lines; "warning" events as
    `nst3d: warning: ...` lines, also when quiet."""

    def __init__(self, desc: str = "stylizing", quiet: bool = False):
        self.desc = desc
        self.quiet = quiet
        self.bar = None
        self.stage: str | None = None

    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "warning":  # shown even with --quiet, as soon as it happens (not after a long run)
            self.close()
            print(f"nst3d: warning: {event['text']}", file=sys.stderr)
            return
        if self.quiet:
            return
        if kind == "progress":
            if self.bar is not None and event.get("stage") != self.stage:
                self.close()
            if self.bar is None:
                self.stage = event.get("stage")
                from tqdm import tqdm

                # initial: the work before this first event was not timed, so it must not count in the rate
                self.bar = tqdm(total=event["total"], desc=event.get("stage", self.desc),
                                unit=event.get("unit", "step"),
                                dynamic_ncols=True, file=sys.stderr, initial=event["step"])
            self.bar.n = event["step"]
            if "loss" in event:  # optimisation stages; rendering and view preparation have none
                self.bar.set_postfix(loss=f"{event['loss']:.4g}", refresh=False)
            self.bar.refresh()
        elif kind in ("done", "stage_done"):
            self.close()
        elif kind == "message":
            self.close()
            print(event["text"], file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def fan_out(*sinks: EventSink) -> EventSink:
    """One sink that forwards every event to each of `sinks`."""

    def send(event: Event) -> None:
        for sink in sinks:
            sink(event)

    return send


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
