"""Market Data Platform: composes the contract, handlers, persistence and ingestion."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("market-data-platform")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
