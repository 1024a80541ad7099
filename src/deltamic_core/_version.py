"""The package version: the one place it is written (read by pyproject's dynamic version)."""

__version__ = "0.1.0"
