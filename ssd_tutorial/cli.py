"""What the command-line tools share: one-line error messages and checked number flags.

A user's mistake (a bad flag value, a missing or broken file, a refused value) is
reported as one line, ``error: ...`` on stderr, with exit status 2 (argparse's own
status for bad flags); ``--debug`` shows the full traceback instead.  Any other
exception is a bug, and keeps its traceback.  The mistakes are the exception types our
checks raise with a message written for the user: ValueError (which
:class:`ssd_tutorial.checkpoint.CheckpointError` also is) and the file errors below; a
tool adds its own (``user_errors``).

Kept free of torch imports, so that ``data_scripts/download_voc.py`` starts quickly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = [
    "ExternalError",
    "USER_ERRORS",
    "add_debug_flag",
    "error_message",
    "run_main",
    "int_at_least",
]


class ExternalError(RuntimeError):
    """Something outside the program is missing or wrong, and the message says what to
    do: weights that cannot be downloaded (offline) or fail their checksum, a video
    library without FFmpeg.  A RuntimeError, as these were raised before."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ExternalError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the traceback of an error instead of its one-line message."""
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the full traceback"
    )


def error_message(error: BaseException) -> str:
    """The message of ``error`` as the user should read it (a KeyError's without its
    quotes)."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])
    return str(error) or type(error).__name__


def run_main(
    body: Callable[[], int],
    debug: bool = False,
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> int:
    """``body()``'s exit status; one of ``user_errors`` becomes ``error: <message>`` on
    stderr and 2.

    With ``debug`` the exception propagates (full traceback).
    """
    if debug:
        return body()
    try:
        return body()
    except user_errors as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        return 2


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` for whole numbers ``>= low`` (argparse reports a bad value
    as usual)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int>={low}"  # how argparse names the type in its messages
    return parse
