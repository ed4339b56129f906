"""Nexus: a fast, faithful gateway in front of the Anthropic Messages API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nexus-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
