"""The XR package's exceptions: one small hierarchy under DeepRoomError."""

from __future__ import annotations

from deeproom.errors import DeepRoomError


class XRError(DeepRoomError):
    """Something in XR mode went wrong."""


class XRUnavailable(XRError):
    """No OpenXR runtime could be used: none installed, none running, or it refused.

    The message says which, in one line, so the app can print it and fall back to
    desktop mode.
    """


class XRRootError(XRError):
    """The trixie folder with Monado could not be built or used."""
