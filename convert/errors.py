"""The exception types conversion raises for bad input: each message says what is wrong and how to fix it."""

from ..errors import FolderError, UserError


class ConversionError(UserError, ValueError):
    """A checkpoint or output location that cannot be converted; nothing partial is left behind."""


class CheckpointFolderError(ConversionError, FolderError):
    """A model or adapter folder that no verb can use (config, index or safetensors header): the message names the
    file, the problem and the fix. Raised by `checkpoint.validate_folder`, which every verb calls before reading."""


class GGUFFileError(ConversionError):
    """A GGUF file that cannot be read (truncated, not GGUF, corrupt): the message names the file."""
