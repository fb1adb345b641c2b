"""The demo room's layout: one panel of each kind around the visitor, a host named Demo."""

from __future__ import annotations

import math

from deeproom.document import RoomDocument, new_room
from deeproom.state import PanelKind

DEMO_ROOM_ID = "demo"
DEMO_HOST = "demo-host"

_TITLES = {
    PanelKind.MODEL_GRAPH: "Model graph",
    PanelKind.METRICS: "Training curves",
    PanelKind.CONFUSION_MATRIX: "Confusion matrix",
    PanelKind.LATENT_CLOUD: "Latent space",
    PanelKind.FEATURE_MAPS: "Feature maps",
    PanelKind.FILTERS: "Filters",
    PanelKind.GRAD_CAM: "Grad-CAM",
    PanelKind.ATTENTION: "Attention",
    PanelKind.IMAGE: "Input image",
    PanelKind.NOTE: "Notes",
}


def arc_transform(index: int, count: int, *, radius: float = 3.0, height: float = 1.5) -> dict[str, list[float]]:
    """Place panel `index` of `count` on an arc in front of the visitor, facing them."""
    spread = math.radians(150)
    angle = -spread / 2 + spread * (index / max(count - 1, 1))
    x, z = radius * math.sin(angle), radius * math.cos(angle)
    yaw = angle / 2  # quaternion about y: (cos(a/2), 0, sin(a/2), 0)
    return {"position": [x, height, z], "rotation": [math.cos(yaw), 0.0, math.sin(yaw), 0.0], "scale": [1.0, 1.0, 1.0]}


def build_demo_room(room_id: str = DEMO_ROOM_ID) -> RoomDocument:
    doc = new_room(room_id, name="DeepRoom demo", host_id=DEMO_HOST, host_name="Demo")
    kinds = list(PanelKind)
    for i, kind in enumerate(kinds):
        doc.apply(
            {
                "op": "add_panel",
                "panel_id": f"{kind.value.replace('_', '-')}",
                "kind": kind.value,
                "title": _TITLES[kind],
                "transform": arc_transform(i, len(kinds)),
                "size": [1.2, 0.9],
            },
            DEMO_HOST,
        )
    return doc
