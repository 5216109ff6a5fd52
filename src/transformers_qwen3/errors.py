"""The errors a user can fix, in one hierarchy.

Every error the tools raise on purpose for bad input derives from :class:`UserError`; its message names what was
wrong and how to fix it. The CLI catches ``UserError`` alone and prints its message as one line: anything else that
escapes is a bug and keeps its traceback.

The media errors of the Hub code (``MediaError`` in ``processing_qwen3_multimodal.py``) cannot derive from this
class, since Hub files import only stdlib, torch and transformers. They are caught by the name ``MediaError``,
which matches the installed class and every remote-code copy of it (see that class).

This module imports nothing, so every layer (``convert/`` included) may import it.
"""


class UserError(Exception):
    """Bad input the user can fix; the message says what and how."""


class FolderError(UserError, ValueError):
    """A model or adapter folder that cannot be used: the message names the file and the problem."""


class OutputError(UserError, FileExistsError):
    """An output location that cannot be written safely (exists without --force, holds files we did not write,
    is the current folder or contains the source)."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is not installed; the message gives the install command."""

    def __init__(self, what: str, install: str, purpose: str = ""):
        for_what = f" for {purpose}" if purpose else ""
        super().__init__(f"{what} is needed{for_what} but is not installed; install it with: {install}")


__all__ = ["UserError", "FolderError", "OutputError", "MissingDependencyError"]
