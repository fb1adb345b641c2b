"""DeepRoom: look inside neural networks together, in a shared room.

The core (this package) is pure Python: room state, the operations that change it,
the replicated room document, storage, layouts and the command line. The relay
(`deeproom.net`), the torch engine (`deeproom.models`) and the scenes
(`deeproom.scenes`) build on it; `deeproom.watch` is imported from the engine only
when first used, so `import deeproom` stays light.
"""

from __future__ import annotations

from typing import Any

from deeproom.document import RoomChange, RoomDocument, Subscription, new_room
from deeproom.errors import (
    DeepRoomError,
    LayoutFileError,
    NotFound,
    PermissionDenied,
    StorageError,
    ValidationError,
)
from deeproom.ops import SYSTEM, Operation, parse_operation
from deeproom.state import (
    FollowMode,
    Panel,
    PanelContent,
    PanelKind,
    Participant,
    Role,
    Room,
    RoomSettings,
    Transform,
    VoiceMode,
)

__version__ = "0.1.0"

__all__ = [
    "SYSTEM",
    "DeepRoomError",
    "FollowMode",
    "LayoutFileError",
    "NotFound",
    "Operation",
    "Panel",
    "PanelContent",
    "PanelKind",
    "Participant",
    "PermissionDenied",
    "Role",
    "Room",
    "RoomChange",
    "RoomDocument",
    "RoomSettings",
    "StorageError",
    "Subscription",
    "Transform",
    "ValidationError",
    "VoiceMode",
    "new_room",
    "parse_operation",
    "watch",
]


def __getattr__(name: str) -> Any:
    # `deeproom.watch(model, room=..., server=...)` lives with the training engine (torch);
    # importing it here lazily keeps the core free of torch.
    if name == "watch":
        from deeproom.models.training import watch

        return watch
    raise AttributeError(f"module 'deeproom' has no attribute {name!r}")
