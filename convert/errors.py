"""The exception types conversion raises for bad input: each message says what is wrong and how to fix it."""

from ..errors import UserError
from ..formats.errors import GGUFFileError  # one class, raised by formats.gguf_file; re-exported for verify

__all__ = ["ConversionError", "GGUFFileError"]


class ConversionError(UserError, ValueError):
    """A checkpoint or output location that cannot be converted; nothing partial is left behind."""
