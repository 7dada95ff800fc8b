"""Tests for ssd_tutorial.cli: one-line errors for the user's mistakes, tracebacks for
bugs."""

from __future__ import annotations

import argparse

import pytest

from ssd_tutorial.cli import add_debug_flag, int_at_least, run_main


def _fails_with(error: BaseException):
    def body() -> int:
        raise error

    return body


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("lr must be > 0, got -1"), "error: lr must be > 0, got -1\n"),
        (FileNotFoundError("no checkpoint at x.pt"), "error: no checkpoint at x.pt\n"),
        (FileExistsError("runs/a holds a run"), "error: runs/a holds a run\n"),
    ],
)
def test_a_user_error_is_one_line_and_status_2(error, line, capsys):
    assert run_main(_fails_with(error)) == 2
    assert capsys.readouterr().err == line


def test_debug_and_bugs_keep_the_traceback(capsys):
    with pytest.raises(ValueError, match="bad value"):
        run_main(_fails_with(ValueError("bad value")), debug=True)
    with pytest.raises(ZeroDivisionError):  # not a user error: a bug, shown as one
        run_main(_fails_with(ZeroDivisionError("division by zero")))
    assert capsys.readouterr().err == ""
    assert run_main(lambda: 0) == 0


def test_extra_user_errors_and_key_error_message(capsys):
    assert (
        run_main(_fails_with(KeyError("unknown config 'x'")), user_errors=(KeyError,))
        == 2
    )
    # without KeyError's quotes
    assert capsys.readouterr().err == "error: unknown config 'x'\n"


def test_int_at_least_and_the_debug_flag(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int_at_least(1), default=8)
    add_debug_flag(parser)
    assert parser.parse_args(["--batch-size", "3", "--debug"]).batch_size == 3
    for text, message in [
        ("0", "must be >= 1, got 0"),
        ("two", "expected a whole number, got 'two'"),
    ]:
        with pytest.raises(SystemExit):
            parser.parse_args(["--batch-size", text])
        assert f"--batch-size: {message}" in capsys.readouterr().err
