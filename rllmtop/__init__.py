"""rllmtop: top for reasoning-LLM serving, and the load tester that makes it move."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rllmtop")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
