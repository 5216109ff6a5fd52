"""The errors of reading files from disk: the folder check (:func:`.folder.validate_folder`), which every verb runs
before reading a folder, and the GGUF reader (:mod:`.gguf_file`)."""

from ..errors import FolderError, UserError


class CheckpointFolderError(FolderError):
    """A model or adapter folder that no verb can use (config, index or safetensors header): the message names the
    file, the problem and the fix."""


class GGUFFileError(UserError, ValueError):
    """A GGUF file that cannot be read (truncated, not GGUF, corrupt): the message names the file."""
