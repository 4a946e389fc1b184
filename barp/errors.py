"""Exceptions raised for problems a user can cause (bad files, bad configs, bad preferences)."""


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
