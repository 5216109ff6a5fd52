"""The one exception type conversion raises for bad input: its message says what is wrong and how to fix it."""


class ConversionError(ValueError):
    """A checkpoint or output location that cannot be converted; nothing partial is left behind."""
