"""The exception types conversion raises for bad input: each message says what is wrong and how to fix it."""

from ..errors import UserError


class ConversionError(UserError, ValueError):
    """A checkpoint or output location that cannot be converted; nothing partial is left behind."""
