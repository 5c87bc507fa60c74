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

COMMANDS = ("image", "mesh", "splat", "nerf", "render", "batch", "demo", "bench", "worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nst3d", description="Neural style transfer for 3D assets and images.")
    parser.add_argument("--version", action="version", version=f"nst3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"nst3d.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Only `nst3d batch` takes options it does not know itself: it passes them on to every job.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "pass_through", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    CTRL_C.clear()
    previous = _catch_ctrl_c()
    try:
        return args.run(args) or 0
    except UserError as exc:
        print(f"nst3d: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnst3d: cancelled; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("nst3d: error: out of memory; lower --size or --views", file=sys.stderr)
        return 3
    except Exception as exc:
        if exc.__class__.__name__ == "OutOfMemoryError":
            print("nst3d: error: out of GPU memory; lower --size or --views, or use --device cpu", file=sys.stderr)
            return 3
        raise
    finally:
        CTRL_C.clear()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _on_ctrl_c(signum: int, frame: object) -> None:
    """Ctrl-C: raise KeyboardInterrupt, as Python does, and set CTRL_C for the stylization loop."""
    CTRL_C.set()
    raise KeyboardInterrupt


def _catch_ctrl_c():
    """Install _on_ctrl_c (main thread only); returns the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, _on_ctrl_c)


if __name__ == "__main__":
    sys.exit(main())
