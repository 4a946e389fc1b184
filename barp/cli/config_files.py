"""Config files are read as YAML before any parsing, so that a syntax error names its file, line and column."""

from __future__ import annotations

from pathlib import Path

from barp.errors import ConfigError


def check_config_files(argv: list[str]) -> None:
    """Parse every ``--config`` file named in ``argv`` as YAML first, so that a syntax error names its file.

    Args:
        argv: Command-line arguments.

    Raises:
        ConfigError: A config file is not valid YAML (the message names the file, line and column).
    """
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        if not Path(path).is_file():
            continue
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"--config {path}: not valid YAML{at}: {problem}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--config {path}: cannot be read as text ({type(err).__name__})") from None
