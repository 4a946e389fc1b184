"""Exceptions raised for problems a user can cause (bad files, bad configs, bad preferences)."""


class BarpError(ValueError):
    """Base class of barp's user-facing errors; the CLI prints the message and exits non-zero."""


class DataValidationError(BarpError):
    """A data file or table is malformed; the message names the source, field, row/column and value."""


class ConfigError(BarpError):
    """A configuration value is invalid; the message names the option and the value."""
