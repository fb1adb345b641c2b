"""The engine's errors: one small hierarchy under `deeproom.errors.DeepRoomError`.

Each message says what was wrong and what is allowed, so the command line and the
scenes can show it as it is.
"""

from __future__ import annotations

from deeproom.errors import DeepRoomError, NotFound, ValidationError


class EngineError(DeepRoomError):
    """Base of every error the torch engine raises on purpose."""


class ModelLoadError(EngineError, ValidationError):
    """A model file that is unreadable, truncated, of an unknown kind, or unsafe to load."""


class UnsafeModelError(ModelLoadError):
    """A file that would run code to load (a pickle of Python objects); refused."""


class UnsupportedOperatorError(ModelLoadError):
    """An ONNX graph uses an operator (or an operator version) the executor does not implement."""


class LayerNotFoundError(EngineError, NotFound):
    """A layer name that does not exist in the model."""


class TargetError(EngineError, ValidationError):
    """A target class (or channel) out of range, or of the wrong shape."""


class DatasetError(EngineError, ValidationError):
    """A dataset that cannot be read: unreadable images, mismatched shapes, bad labels."""


class AnalysisError(EngineError, ValidationError):
    """An analysis asked of a layer or model it does not apply to."""


class JobCancelled(EngineError):
    """A job was cancelled before it finished; nothing was cached."""
