"""Exceptions raised for problems a user can cause (bad files, bad configs, bad preferences)."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class BarpError(ValueError):
    """Base class of barp's user-facing errors; the CLI prints the message and exits non-zero."""


class DataValidationError(BarpError):
    """A data file or table is malformed; the message names the source, field, row/column and value."""


class ConfigError(BarpError):
    """A configuration value is invalid; the message names the option and the value."""


def find_user_error(err: BaseException | None) -> BarpError | None:
    """The BarpError behind ``err``, following ``__cause__``/``__context__`` (jsonargparse wraps errors raised
    while instantiating classes), or None if the failure is not one a user caused."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, BarpError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Turn a user-caused failure (a :class:`BarpError`, however wrapped) into one line on stderr and exit code 2.

    Args:
        prog: Program name to prefix the message with, e.g. ``barp``.
    """
    try:
        yield
    except Exception as err:
        cause = find_user_error(err)
        if cause is None:
            raise
        print(f"{prog}: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def run_tool(function, argv: list[str] | None = None, exit_code: int = 2) -> int:
    """Run a ``tools/`` script's function as a command line (jsonargparse's ``auto_cli``, options by name).

    Args:
        function: The typed, documented function (its docstring is the help text).
        argv: Arguments (default ``sys.argv[1:]``).
        exit_code: Returned, after one ``error: ...`` line on stderr, when the user's input is bad.

    Returns:
        0 on success, else ``exit_code``.
    """
    from jsonargparse import auto_cli

    try:
        auto_cli(function, args=argv, as_positional=False)
    except Exception as err:
        cause = find_user_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return exit_code
    return 0
