"""The error of the folder check (:func:`.folder.validate_folder`), which every verb runs before reading a folder."""

from ..errors import FolderError


class CheckpointFolderError(FolderError):
    """A model or adapter folder that no verb can use (config, index or safetensors header): the message names the
    file, the problem and the fix."""
