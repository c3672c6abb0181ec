"""Known errors and how commands report them.

Every error the user can fix (a config value, a data file, a model file, the tracking server, an export) is a
:class:`DiffSynthError` whose message says what is wrong, which file or flag, and the fix. :func:`run_main`
prints such an error as ONE line and exits non-zero; any other exception is a bug and keeps its traceback.
``--debug`` (CLI) or ``DIFFSYNTH_DEBUG=1`` (CLI and DVC stages) shows the traceback of known errors too.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable

DEBUG_ENV = "DIFFSYNTH_DEBUG"
DEBUG_FLAG = "--debug"
KNOWN_ERROR_EXIT = 2  # 1 stays for "the check ran and failed" (e.g. invalid dataset rows)


class DiffSynthError(Exception):
    """An error with a fix the user can apply; the message names the file/flag and says what to do."""


class ConfigError(DiffSynthError, ValueError):
    """A params.yaml / flag value that cannot work; the message names the key and the fix."""


class TrackingError(DiffSynthError, ConnectionError):
    """The MLflow tracking server cannot be used."""


class MissingExtraError(DiffSynthError, ImportError):
    """A flag needs an optional package that is not installed; the message names the extra to install."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` in ``argv`` or ``DIFFSYNTH_DEBUG`` set to anything but empty/0/false/no."""
    if argv is not None and DEBUG_FLAG in argv:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def strip_debug_flag(argv: list[str]) -> list[str]:
    return [a for a in argv if a != DEBUG_FLAG]


def one_line(error: BaseException) -> str:
    """The error as a single line (messages of wrapped errors may carry newlines)."""
    text = str(error)
    if "\nOriginal Traceback" in text:  # re-raised from a DataLoader worker: its own message is the last line
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    text = re.sub(r"\s*\n\s*", " ", text).strip() or type(error).__name__
    rank = os.environ.get("RANK", "0")
    # under `accelerate launch` every rank reports: a data error may hit only the rank that loaded the row
    return f"error: {text}" if rank in ("", "0") else f"error [rank {rank}]: {text}"


def run_main(main: Callable[[], int | None], argv: list[str] | None = None) -> int:
    """Run a command's ``main``; a known error becomes one line on stderr and a non-zero exit code.

    ``argv`` is only read for ``--debug`` (the caller strips it before parsing).
    """
    debug = debug_requested(argv)
    try:
        return main() or 0
    except DiffSynthError as e:
        if debug:
            raise
        sys.stdout.flush()
        print(one_line(e), file=sys.stderr, flush=True)
        return KNOWN_ERROR_EXIT
