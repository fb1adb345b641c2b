"""What the engine tests share: coloured squares on noise (the class is the colour), a small
residual CNN that learns them, and a participant that asks an engine for analyses and reads
its action reports."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

SIZE = 16
COLOURS = {"green": (0.1, 1.0, 0.1), "red": (1.0, 0.1, 0.1)}  # sorted: folder order = class index
ENDS = ("done", "failed", "refused", "cancelled")


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1(x))
        a = torch.relu(a + self.conv2(a))  # the residual connection
        a = torch.relu(self.conv3(a))
        return self.fc(a.mean((2, 3)))


def square_image(colour: tuple[float, ...], rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """A SIZE×SIZE float image of dim noise with a 5×5 square of `colour`, and the square's corner."""
    img = rng.uniform(0, 0.25, (SIZE, SIZE, 3)).astype(np.float32)
    y, x = (int(v) for v in rng.integers(1, SIZE - 6, 2))
    img[y : y + 5, x : x + 5] = colour
    return img, (y, x)


def train_on_squares(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Module:
    """Fit `model` to (x, y) with Adam; the tests are about the maps of a model that knows the squares."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    assert acc > 0.95, acc
    return model


class Peer:
    """A participant's BackgroundClient and the action reports ("stream" events on the "action"
    channel) it saw."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []

    def pump(self) -> None:
        while True:
            try:
                item = self.client.inbox.get_nowait()
            except queue.Empty:
                return
            data = getattr(item, "data", None)
            if (getattr(item, "kind", None) == "event" and isinstance(data, tuple) and data[0] == "stream"
                    and data[2].get("channel") == "action"):
                self.events.append(dict(data[2]))

    def states(self, rid: str) -> list[str]:
        self.pump()
        return [e["state"] for e in self.events if e.get("request_id") == rid]

    def wait(self, check: Callable[[], Any], timeout: float = 90.0, between: Callable[[], None] | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            v = check()
            if v:
                return v
            if between is not None:
                between()
            else:
                time.sleep(0.05)
        raise AssertionError(f"not within {timeout} s; events: {self.events[-6:]}")

    def final(self, rid: str, timeout: float = 90.0, between: Callable[[], None] | None = None) -> dict[str, Any]:
        def end() -> dict[str, Any] | None:
            return next((e for e in reversed(self.events) if e.get("request_id") == rid and e["state"] in ENDS), None)

        return self.wait(end, timeout, between)  # type: ignore[no-any-return]

    def ask(self, engine: str, action: str, panel: str, params: dict[str, Any], rid: str) -> None:
        """Send a panel action to `engine` (the relay's ack within 30 s; a refusal raises)."""
        self.client.send_event("steer", {"action": action, "panel_id": panel, "params": params,
                                         "request_id": rid}, to=engine).result(30)

    def blob(self, panel: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The content of `panel` once it has some: (meta, arrays)."""
        from deeproom.content import decode_content

        p = self.wait(lambda: self.client.room.panels.get(panel) if panel in self.client.room.panels
                      and self.client.room.panels[panel].content.refs else None)
        meta, arrays = decode_content(self.client.get_blob(p.content.refs[0]).result(30))
        return dict(meta), dict(arrays)
