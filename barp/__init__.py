"""barp: learn cost-aware LLM routers from bandit feedback (BaRP) with PyTorch Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("barp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
