"""The `nst3d` command: one sub-command per module in nst3d.commands.

User errors print one line (no traceback) and exit 2; Ctrl-C or Cancel exits 130; out-of-memory exits 3.
Nothing is half-written in any of these cases: outputs go to temporary names and are renamed at the end.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from nst3d import __version__
from nst3d.errors import UserError
from nst3d.events import CTRL_C
from nst3d.schema import subcommand_parser

COMMANDS = ("image", "mesh", "splat", "nerf", "render", "batch", "demo", "bench", "worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nst3d", description="Neural style transfer for 3D assets and images.")
    parser.add_argument("--version", action="version", version=f"nst3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"nst3d.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    CTRL_C.clear()
    # Start-up imports torch and the engines: a KeyboardInterrupt raised inside a C extension's import can abort
    # the process or be swallowed, so until the command runs Ctrl-C is only noted, then acted on.
    previous = _catch_ctrl_c(_note_ctrl_c)
    try:
        parser = build_parser()
        # Only `nst3d batch` takes options it does not know itself: it passes them on to every job.
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "pass_through", False):  # the sub-command's usage, not the top level's
            subcommand_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        _catch_ctrl_c(_on_ctrl_c)
        if CTRL_C.is_set():
            raise KeyboardInterrupt
        return args.run(args) or 0
    except UserError as exc:
        print(f"nst3d: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnst3d: cancelled; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print(OUT_OF_MEMORY, file=sys.stderr)
        return 3
    except Exception as exc:
        if exc.__class__.__name__ == "OutOfMemoryError":
            print("nst3d: error: out of GPU memory; lower --size or --views, or use --device cpu", file=sys.stderr)
            return 3
        if isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc):  # torch's CPU allocator
            print(OUT_OF_MEMORY, file=sys.stderr)
            return 3
        raise
    finally:
        CTRL_C.clear()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


OUT_OF_MEMORY = "nst3d: error: out of memory; lower --size, --style-size or --views"


def _note_ctrl_c(signum: int, frame: object) -> None:
    """Ctrl-C while starting up: only set CTRL_C (main acts on it once the imports are done)."""
    CTRL_C.set()


def _on_ctrl_c(signum: int, frame: object) -> None:
    """Ctrl-C: raise KeyboardInterrupt, as Python does, and set CTRL_C for the stylization loop."""
    CTRL_C.set()
    raise KeyboardInterrupt


def _catch_ctrl_c(handler):
    """Install `handler` for SIGINT (main thread only); returns the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


if __name__ == "__main__":
    sys.exit(main())
