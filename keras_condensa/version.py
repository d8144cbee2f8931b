"""The package version: the one source that pyproject.toml reads."""

__version__ = "0.1.0"
