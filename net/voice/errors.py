"""Voice's errors: one small hierarchy under DeepRoomError; each says what was wrong."""

from __future__ import annotations

from deeproom.errors import DeepRoomError


class VoiceError(DeepRoomError):
    """Something in voice failed on purpose-checked grounds."""


class NoAudioDevice(VoiceError):
    """No microphone or no speakers (or PortAudio is missing); the room works without voice."""


class SignalError(VoiceError, ValueError):
    """A signalling message (offer, answer, candidate, SFU access) that is not well formed."""


class SfuError(VoiceError):
    """The SFU (Janus) refused a request, is unreachable, or could not be started."""


class NamespaceError(VoiceError):
    """A network namespace for the SFU could not be created, entered or removed."""
