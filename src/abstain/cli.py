"""The ``abstain`` command.

Each sub-command lives in ``abstain.commands.<module>`` with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. User errors
(:class:`abstain.errors.AbstainError`) print one line and exit 2; ``--debug`` shows
the traceback. SIGINT and SIGTERM exit 130 after the command had its chance to stop cleanly.
"""
from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from types import ModuleType
from typing import Sequence

from . import __version__, distributed
from .commands import abstain_cmd, certify, data, evaluate, report, reproduce, train
from .errors import AbstainError


def commands() -> dict[str, ModuleType]:
    """Sub-command name -> its module under ``abstain.commands``."""
    return {"train": train, "evaluate": evaluate, "certify": certify, "abstain": abstain_cmd,
            "reproduce": reproduce, "report": report, "data": data}


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows an option's default once: appended only where the text does not
    already say it, and never for options without a value (flags, None). A description
    written as a docstring (several lines) is kept as written; a one-line one is wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default in (None, False, argparse.SUPPRESS)
                or action.nargs == 0 or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abstain",
        description="Find and remove robust misclassifications: evaluate the robustness-accuracy "
                    "partition, fine-tune with ERA/DGA/CRA, build abstain models and compositions, "
                    "certify with randomized smoothing, and report.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"abstain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in commands().items():
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=HelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks for errors")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    previous_int, previous_term = _stop_signals_interrupt()
    try:
        code = int(args._run(args) or 0)
        _shutdown_distributed(synchronise=True)
        return code
    except AbstainError as e:
        if debug:
            raise
        print(f"abstain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if debug or e.errno not in _USER_OS_ERRORS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        fix = "raise the file-size limit (ulimit -f)" if e.errno == errno.EFBIG else "free space"
        print(f"abstain {args.command}: error: cannot write{where}: {e.strerror or e}; {fix} or "
              "choose a writable --out, then rerun the same command", file=sys.stderr)
        return 2
    except RecursionError:
        if debug:
            raise
        print(f"abstain {args.command}: error: an input file is nested too deeply to be read "
              "(rerun with --debug to see which)", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        text = str(e)
        oom = isinstance(e, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text
        if debug or not oom:
            raise
        print(f"abstain {args.command}: error: out of memory ({text.splitlines()[0][:160] if text else 'MemoryError'}); "
              "rerun with a smaller --batch-size (e.g. half)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\nabstain {args.command}: interrupted; rerun the same command (with --resume "
              "where it applies) to continue", file=sys.stderr)
        return 130
    finally:
        # after an error or an interruption too: a rank that exits with its gloo threads live
        # aborts ("terminate called without an active exception") instead of exiting cleanly;
        # not synchronised here, since after an error another rank may never arrive
        _shutdown_distributed(synchronise=False)
        for sig, previous in ((signal.SIGINT, previous_int), (signal.SIGTERM, previous_term)):
            if previous is not None:
                signal.signal(sig, previous)


# a full disk, a read-only or forbidden output: the user's to fix, said in one line
_USER_OS_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR,
                   errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_signals_interrupt() -> tuple[object, object]:
    """SIGINT and SIGTERM (Ctrl-C, a scheduler's stop, ``kill``) stop every command the same
    clean way: finished chunks and checkpoints are kept and the same command continues.
    SIGINT raises KeyboardInterrupt even when the command was started with SIGINT ignored
    (a shell script's ``cmd &`` does that: seen as a kill test whose SIGINTs did nothing when
    the suite ran in the background). Returns the previous (SIGINT, SIGTERM) handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None, None
    return (signal.signal(signal.SIGINT, signal.default_int_handler),
            signal.signal(signal.SIGTERM, _raise_interrupt))


def _shutdown_distributed(synchronise: bool) -> None:
    distributed.shutdown(synchronise)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
