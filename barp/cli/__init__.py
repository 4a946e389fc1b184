"""The ``barp`` command: one LightningCLI with barp's subcommands."""

from barp.cli.main import main, run

__all__ = ["main", "run"]
