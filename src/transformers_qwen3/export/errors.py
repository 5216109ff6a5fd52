"""The error of the ``export`` verb."""

from ..errors import UserError


class ExportError(UserError, ValueError):
    """A problem with the user's input, stated so that they can fix it."""
