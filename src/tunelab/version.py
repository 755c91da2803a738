"""The tunelab version (one place; ``tunelab.__version__`` re-exports it)."""

__version__ = "0.1.0"
