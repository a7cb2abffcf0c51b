"""The one error the .dcz reader raises for a file it cannot trust."""

from __future__ import annotations


class CompressedFileError(ValueError):
    """A .dcz file is truncated, corrupted, not a .dcz file, or from a newer format version."""
