"""How barp's own subcommands (``sweep``, ``ope``, ``calibrate``, ``serve``) build their parsers.

Each command is a plain function whose signature and docstring are its options and their help; the parser is built
from them (:func:`function_parser`), so a new option is one new parameter. ``barp sweep`` adds the sections of an
experiment config (``--config``, ``model``, ``data``, ``trainer``) on top, as ``barp fit`` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from jsonargparse import ArgumentParser


def function_parser(function: Callable[..., Any], prog: str, description: str,
                    skip: Iterable[str] = ()) -> ArgumentParser:
    """The parser of a command: one option per parameter of ``function`` (those in ``skip`` left out), typed by its
    annotation, with its default and the docstring's description as help.

    Args:
        function: The function the command runs.
        prog: The command as ``--help`` names it, e.g. ``"barp ope"``.
        description: What the command does (first lines of ``--help``).
        skip: Parameters the command fills itself (not options).
    """
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_function_arguments(function, skip=set(skip))
    return parser
