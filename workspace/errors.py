"""The core's errors: one small hierarchy, each message says what was wrong and what is allowed."""

from __future__ import annotations


class DeepRoomError(Exception):
    """Base of every error DeepRoom raises on purpose."""


class ValidationError(DeepRoomError, ValueError):
    """Input (an operation, a file, a message) is not what is allowed."""


class PermissionDenied(DeepRoomError):
    """The actor's role or a lock does not allow this change."""


class NotFound(DeepRoomError, KeyError):
    """A panel, participant, room, layout or blob that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class StorageError(DeepRoomError):
    """The store could not read or write what was asked."""


class LayoutFileError(ValidationError):
    """A layout file that is unreadable, truncated, of another schema, or nonsense."""
