"""The errors of live training: one small hierarchy under DeepRoomError."""

from __future__ import annotations

from deeproom.errors import DeepRoomError, ValidationError


class TrainingError(DeepRoomError):
    """Something the live-training engine could not do."""


class SteerError(TrainingError, ValidationError):
    """A steering command that is malformed or names what does not exist (a layer, a filter, a point)."""


class CheckpointError(TrainingError):
    """A checkpoint that could not be written, found or read."""
