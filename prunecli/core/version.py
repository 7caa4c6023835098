"""The package version (read by the root package and by every document prunecli writes)."""

__version__ = "0.1.0"
