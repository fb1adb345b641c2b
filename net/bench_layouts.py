"""How long loading a saved layout into a live room takes (`layout_load_s`).

An embedded relay on 127.0.0.1 (in a temporary folder), a host, a presenter and a viewer.
The host adds N panels (each showing a small content blob), the presenter saves the
layout; then, `repeats` times, the host moves every panel away and the presenter loads
the saved version. One measurement runs from the presenter's `load_layout` call until
the viewer's copy of the room has every panel back where the version put it — what a
participant waits for. The baseline, measured in the same run: the same moves sent as
one `move_panel` operation per panel (what a script without layouts would do). `deeproom
bench teach` reports the medians.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


async def _measure(data_dir: Path, panels: int, repeats: int) -> dict[str, Any]:
    from deeproom.net import EmbeddedRelay, RoomClient

    async with EmbeddedRelay(data_dir=data_dir, leave_grace_s=0.5) as relay, \
            RoomClient(relay.url, "bench-layout", "Host", participant_id="host") as host, \
            RoomClient(relay.url, "bench-layout", "Presenter", participant_id="pres") as pres, \
            RoomClient(relay.url, "bench-layout", "Viewer", participant_id="viewer") as viewer:
        await _until(lambda: {"pres", "viewer"} <= set(host.room.participants))
        await host.set_role("pres", "presenter")
        await host.set_role("viewer", "viewer")
        for i in range(panels):
            sha = await host.put_blob(f"content of panel {i}".encode() * 64)
            await host.apply({"op": "add_panel", "panel_id": f"p{i}", "kind": "metrics", "title": f"Panel {i}",
                              "transform": {"position": [(i % 10) * 1.2, 1.0 + (i // 10) * 1.0, 3.0]},
                              "content": {"source": {"bench": i}, "refs": [sha]}})
        await _until(lambda: len(viewer.room.panels) == panels and pres.room.participants["pres"].role.value == "presenter")
        saved = {pid: p.transform for pid, p in host.room.panels.items()}
        await pres.save_layout("bench")
        arrived = lambda: {pid: p.transform for pid, p in viewer.room.panels.items()} == saved  # noqa: E731
        times, baseline = [], []
        for r in range(repeats):
            await _scatter(host, viewer, saved, r)
            start = time.perf_counter()
            loaded = await pres.load_layout("bench")
            await _until(arrived, interval=0.001)
            times.append(time.perf_counter() - start)
            if loaded.not_loaded or loaded.changed != panels:
                raise AssertionError(f"layout bench: expected {panels} moves, got {loaded}")
            # The baseline: the same moves as one operation per panel, as a script would send them.
            await _scatter(host, viewer, saved, r)
            start = time.perf_counter()
            await asyncio.gather(*(pres.submit({"op": "move_panel", "panel_id": pid, "transform": t.to_dict()})
                                   for pid, t in saved.items()))
            await _until(arrived, interval=0.001)
            baseline.append(time.perf_counter() - start)
        return {"layout_load_s": statistics.median(times), "layout_load_s_max": max(times),
                "layout_load_baseline_s": statistics.median(baseline), "layout_panels": panels}


async def _scatter(host: Any, viewer: Any, saved: dict[str, Any], r: int) -> None:
    """Move every panel away from where the version has it (and wait until the viewer sees that)."""
    for i, pid in enumerate(saved):
        host.submit({"op": "move_panel", "panel_id": pid, "transform": {"position": [-5.0 - r, 0.5 + i * 0.1, 6.0]}})
    await _until(lambda: all(p.transform != saved[pid] for pid, p in viewer.room.panels.items()))


async def _until(check: Any, timeout: float = 60.0, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"layout bench: condition not met within {timeout} s")
        await asyncio.sleep(interval)


def measure_layout_load(panels: int = 50, repeats: int = 5) -> dict[str, Any]:
    """{"layout_load_s": median seconds, "layout_load_s_max", "layout_load_baseline_s", "layout_panels"} for a version of
    `panels` panels, loaded `repeats` times (runs its own relay and clients; call it from no event loop)."""
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-layout-") as tmp:
        return asyncio.run(_measure(Path(tmp), panels, repeats))


if __name__ == "__main__":
    import json

    print(json.dumps(measure_layout_load()))
