"""Layouts in a live room: save, list, load, export and import through a real relay on
127.0.0.1, with three real clients (host, presenter, viewer), on SQLite and on Redis."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from deeproom.errors import NotFound, PermissionDenied, ValidationError
from deeproom.layout import read_layout_file
from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.state import Transform

from .conftest import eventually

ROOM = "class"


def _panel(pid: str, x: float, refs: list[str] | None = None, kind: str = "note") -> dict[str, Any]:
    return {"op": "add_panel", "panel_id": pid, "kind": kind, "title": pid.upper(),
            "transform": {"position": [x, 1.5, 2.0]}, "size": [1.0, 0.8],
            "content": {"source": {"engine": "test", "panel": pid}, "refs": refs or []}}


def _move(pid: str, x: float, y: float = 2.5) -> dict[str, Any]:
    return {"op": "move_panel", "panel_id": pid, "transform": {"position": [x, y, 4.0]}}


def _positions(c: RoomClient) -> dict[str, tuple[float, float, float]]:
    return {pid: p.transform.position for pid, p in c.room.panels.items()}


def _places(c: RoomClient) -> dict[str, Transform]:
    return {pid: p.transform for pid, p in c.room.panels.items()}


@asynccontextmanager
async def three(url: str, url2: str | None = None) -> AsyncIterator[tuple[RoomClient, RoomClient, RoomClient]]:
    """Host (creates the room), a presenter and a viewer; with `url2` the presenter and viewer
    are on a second relay node."""
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(RoomClient(url, ROOM, "Host", participant_id="host"))
        other = url2 or url
        pres = await stack.enter_async_context(RoomClient(other, ROOM, "Presenter", participant_id="pres"))
        viewer = await stack.enter_async_context(RoomClient(other, ROOM, "Viewer", participant_id="viewer"))
        await eventually(lambda: {"pres", "viewer"} <= set(host.room.participants))
        await host.set_role("pres", "presenter")
        await host.set_role("viewer", "viewer")
        await eventually(lambda: pres.room.participants["pres"].role.value == "presenter"
                         and viewer.room.participants["viewer"].role.value == "viewer")
        yield host, pres, viewer


async def _save_move_load(host: RoomClient, pres: RoomClient, viewer: RoomClient) -> None:
    sha = await host.put_blob(b"curve bytes " * 100)
    for i, pid in enumerate(("loss", "graph", "cloud")):
        await host.apply(_panel(pid, float(i), [sha] if pid == "loss" else None))
    await eventually(lambda: len(viewer.room.panels) == 3 and len(pres.room.panels) == 3)
    saved = _places(host)

    info = await pres.save_layout("lecture")
    assert (info.name, info.version, info.panels) == ("lecture", 1, 3)

    for i, pid in enumerate(("loss", "graph", "cloud")):
        await host.apply(_move(pid, 10.0 + i))
    await eventually(lambda: _places(viewer) != saved and _places(pres) == _places(host) == _places(viewer))

    changes: list[Any] = []
    sub = viewer.observe(changes.append)
    loaded = await pres.load_layout("lecture")
    assert (loaded.name, loaded.version, loaded.changed, loaded.not_loaded) == ("lecture", 1, 3, ())
    assert _places(pres) == saved  # the load's update came with its answer
    await eventually(lambda: _places(host) == saved and _places(viewer) == saved)
    sub.unsubscribe()
    assert len(changes) == 1  # the whole layout arrived as one update, not panel by panel

    listed = await viewer.list_layouts()
    assert [(i.name, i.version, i.panels) for i in listed] == [("lecture", 1, 3)]


async def test_save_move_load_all_three_see_the_old_positions(relay: EmbeddedRelay) -> None:
    async with three(relay.url) as (host, pres, viewer):
        await _save_move_load(host, pres, viewer)
        # the same version again: nothing to do, nothing sent
        again = await host.load_layout("lecture", 1)
        assert again.changed == 0


async def test_member_and_viewer_are_refused_and_nothing_changes(relay: EmbeddedRelay) -> None:
    async with three(relay.url) as (host, pres, viewer), \
            RoomClient(relay.url, ROOM, "Member", participant_id="member") as member:
        await host.apply(_panel("loss", 0.0))
        await pres.save_layout("start")
        await host.apply(_move("loss", 5.0))
        await eventually(lambda: "member" in host.room.participants and "loss" in member.room.panels)
        before = host.room
        for who, role in ((viewer, "viewer"), (member, "member")):
            with pytest.raises(PermissionDenied, match=f"only the host or a presenter may load a layout; '{who.participant_id}' is {role}"):
                await who.load_layout("start")
            with pytest.raises(PermissionDenied, match="may save a layout"):
                await who.save_layout("mine")
            with pytest.raises(PermissionDenied, match="may import a layout"):
                await who.import_layout(await host.export_layout(), "mine")
        # listing and exporting are open to everyone in the room
        assert [i.name for i in await viewer.list_layouts()] == ["start"]
        assert (await member.export_layout("start")).panels[0].transform.position == (0.0, 1.5, 2.0)
        assert [i.version for i in await host.list_layouts()] == [1]
        await host.sync()
        assert host.room == before

        # all or nothing: a panel the member holds locked makes the whole load refused
        await host.apply(_panel("graph", 1.0))
        await pres.save_layout("start")
        await host.apply(_move("graph", 7.0))
        await host.apply(_move("loss", 8.0))
        await member.apply({"op": "lock_panel", "panel_id": "loss"})
        await eventually(lambda: pres.room.panels["loss"].lock_holder == "member")
        before = pres.room
        with pytest.raises(PermissionDenied, match="locked by 'member'"):
            await pres.load_layout("start")
        await pres.sync()
        assert pres.room == before  # graph did not move either
        with pytest.raises(NotFound, match="no version 9 of layout 'start'"):
            await pres.load_layout("start", 9)
        with pytest.raises(NotFound, match=r"no layout 'nope' .*saved: start"):
            await pres.load_layout("nope")


async def test_a_version_whose_content_is_gone_loads_the_rest_and_lists_it(relay: EmbeddedRelay) -> None:
    async with three(relay.url) as (host, pres, viewer):
        kept = await host.put_blob(b"kept " * 50)
        gone = await host.put_blob(b"deleted later " * 50)
        await host.apply(_panel("loss", 0.0, [kept], kind="metrics"))
        await host.apply(_panel("thumbs", 1.0, [gone], kind="image"))
        await host.apply(_panel("note", 2.0))
        await host.apply(_panel("swap", 3.0))
        await pres.save_layout("v")
        await host.apply(_move("loss", 9.0))
        for pid in ("thumbs", "note", "swap"):
            await host.apply({"op": "remove_panel", "panel_id": pid})
        await host.apply(_panel("swap", 3.0, kind="image"))  # the same id, another kind now
        await host.apply(_panel("later", 4.0))
        relay.server.blobs.delete(gone)

        loaded = await pres.load_layout("v")
        skipped = {n.panel_id: n.reason for n in loaded.not_loaded}
        assert set(skipped) == {"thumbs", "swap"}
        assert f"its content is gone: blob {gone[:12]} is not on the relay" in skipped["thumbs"]
        assert "is a image now; the layout has a note" in skipped["swap"]
        want = {"loss": (0.0, 1.5, 2.0), "note": (2.0, 1.5, 2.0), "later": (4.0, 1.5, 2.0), "swap": (3.0, 1.5, 2.0)}
        for c in (host, pres, viewer):
            await eventually(functools.partial(lambda c: _positions(c) == want, c))
        assert viewer.room.panels["note"].owner == "pres"  # re-added by whoever loaded it
        assert viewer.room.panels["loss"].content.refs == (kept,)

        # prune: panels the version lacks go too
        loaded = await pres.load_layout("v", prune=True)
        assert "later" not in pres.room.panels and loaded.changed == 1


async def test_export_import_round_trip(relay: EmbeddedRelay, tmp_path: Path) -> None:
    async with three(relay.url) as (host, pres, viewer):
        for i in range(4):
            await host.apply(_panel(f"p{i}", float(i)))
        await host.apply({"op": "resize_panel", "panel_id": "p1", "size": [2.0, 1.5]})
        current = await viewer.export_layout(path=tmp_path / "room.json")
        assert read_layout_file(tmp_path / "room.json") == current
        assert json.loads((tmp_path / "room.json").read_text())["format"] == "deeproom-layout"
        info = await pres.save_layout("a")
        assert await viewer.export_layout("a", info.version) == current

        for i in range(4):
            await host.apply(_move(f"p{i}", -5.0 - i))
        await host.apply({"op": "resize_panel", "panel_id": "p1", "size": [0.5, 0.5]})
        imported = await pres.import_layout(tmp_path / "room.json", "from-file")
        assert (imported.name, imported.version, imported.panels) == ("from-file", 1, 4)
        assert await host.export_layout("from-file") == current
        loaded = await host.load_layout("from-file")
        assert loaded.changed == 5 and loaded.not_loaded == ()
        await eventually(lambda: viewer.room.panels["p1"].size == (2.0, 1.5)
                         and {k: p.transform for k, p in viewer.room.panels.items()}
                         == {p.id: p.transform for p in current.panels})
        assert [(i.name, i.version) for i in await viewer.list_layouts()] == [("a", 1), ("from-file", 1)]


def _file(panels: list[Any]) -> bytes:
    return json.dumps({"format": "deeproom-layout", "version": 2, "room": {"name": "x"}, "panels": panels}).encode()


HOSTILE = [
    (b"[" * 5000 + b"]" * 5000, "nested 5000 levels deep"),
    (b'{"format": "deeproom-layout", "version": 2, "panels": [' + b'{"a":' * 60 + b"1" + b"}" * 60 + b"]}", "nested"),
    (_file([{"id": "a", "kind": "note", "title": "\ud800"}]).replace(b"\\ud800", b"\\ud800"), "surrogate"),
    (_file([{"id": "a", "kind": "note", "title": "bad\x07bell"}]), "control"),
    (_file([{"id": "a", "kind": "note", "title": "t", "transform": {"position": [1e400, 0, 0]}}]), "Infinity"),
    (_file([{"id": "a\n", "kind": "note", "title": "t"}]), "panel #0"),
    (_file([{"id": "a", "kind": "note", "title": "t", "evil": 1}]), "unknown"),
    (b'{"format": "deeproom-layout", "version": 3, "panels": []}', "upgrade DeepRoom"),
    (b"\xff\xfe not utf-8", "not valid JSON"),
    (b'{"format": "deeproom-layout", "version": 2, "panels": [' + b'{"id": "x", "kind": "note", "title": "t"},' * 5001
     + b'{"id": "y", "kind": "note", "title": "t"}]}', "at most 5000 panels"),
]


async def test_hostile_imports_are_refused_and_the_store_is_untouched(relay: EmbeddedRelay) -> None:
    async with three(relay.url) as (host, pres, viewer):
        await host.apply(_panel("p", 0.0))
        await pres.save_layout("good")
        before = await pres.list_layouts()
        for data, message in HOSTILE:
            sha = await pres.put_blob(data)
            with pytest.raises(ValidationError, match=message):
                await pres._call("layout", {"action": "import", "name": "evil", "blob": sha})
        # a file over the size cap is refused without being parsed
        huge = await pres.put_blob(b" " * (32 * 1024 * 1024 + 1))
        with pytest.raises(ValidationError, match="at most 33554432 bytes"):
            await pres._call("layout", {"action": "import", "name": "evil", "blob": huge})
        # and malformed layout messages
        for msg, message in (
            ({"action": "steal"}, "unknown layout action 'steal'"),
            ({"action": "load", "name": "good", "version": "1"}, "layout version must be a whole number"),
            ({"action": "load", "name": "good", "version": 0}, r"must be in \[1,"),
            ({"action": "load", "name": "good", "prune": 1}, "'prune' must be true or false"),
            ({"action": "save", "name": "two\nlines"}, "layout name"),
            ({"action": "save", "name": "x" * 65}, "layout name"),
            ({"action": "save"}, "layout name"),
            ({"action": "import", "name": "n", "blob": "../../etc/passwd"}, "blob"),
            ({"action": "import", "name": "n", "blob": "0" * 64}, "upload the layout file first"),
            ("not an object", "layout message must be an object"),
        ):
            with pytest.raises((ValidationError, NotFound), match=message):
                await pres._call("layout", msg)  # type: ignore[arg-type]
        with pytest.raises(PermissionDenied):  # a viewer's import is refused before the file is read
            await viewer._call("layout", {"action": "import", "name": "evil", "blob": huge})
        assert await pres.list_layouts() == before
        assert len(host.room.panels) == 1


async def test_layouts_through_redis_on_two_nodes(tmp_path: Path, redis_url: str) -> None:
    async with EmbeddedRelay(data_dir=tmp_path / "n1", redis_url=redis_url, leave_grace_s=0.5) as n1, \
            EmbeddedRelay(data_dir=tmp_path / "n2", redis_url=redis_url, leave_grace_s=0.5) as n2, \
            three(n1.url, n2.url) as (host, pres, viewer):
        await _save_move_load(host, pres, viewer)
        await host.save_layout("lecture")  # node 1 saves version 2 of what node 2 saved
        assert [(i.name, i.version) for i in await pres.list_layouts()] == [("lecture", 1), ("lecture", 2)]
        v1, v2 = await host.export_layout("lecture", 1), await viewer.export_layout("lecture", 2)
        assert [p.transform for p in v1.panels] == [p.transform for p in v2.panels]
        with pytest.raises(PermissionDenied):
            await viewer.load_layout("lecture")


async def test_open_with_a_layout_file_places_the_published_panels(relay: EmbeddedRelay, tmp_path: Path) -> None:
    """`deeproom open --layout FILE`'s part after the room opens: once the engine is ready and its
    panels are in, the file's places are loaded; a panel of the file the room lacks is listed."""
    import asyncio
    import threading

    from deeproom.layout import Layout, write_layout_file
    from deeproom.net import BackgroundClient
    from deeproom.net.open_layout import load_when_published

    async with RoomClient(relay.url, "opened", "Engine", participant_id="engine") as engine:
        await engine.apply(_panel("graph-1", 0.0))
        template = (await engine.export_layout()).panels[0]
        moved = template.__class__.from_dict({**template.to_dict(), "transform": {"position": [4.0, 2.0, 1.0]}})
        ghost = template.__class__.from_dict({**template.to_dict(), "id": "graph-2", "content": {"refs": ["c" * 64]}})
        write_layout_file(Layout("opened", False, (moved, ghost)), tmp_path / "my layout.json")
        layout = read_layout_file(tmp_path / "my layout.json")

        user = BackgroundClient(relay.url, room="opened", name="User", participant_id="user")
        try:
            await asyncio.to_thread(user.wait_ready, 30)
            await engine.set_role("user", "host")  # the engine made the room here; in `open` the user does
            ready, said = threading.Event(), list[str]()
            thread = load_when_published(user, layout, tmp_path / "my layout.json", ready, said.append)
            await engine.apply(_panel("later", 1.0))
            ready.set()
            await asyncio.to_thread(thread.join, 30)
            assert said[0] == f"layout {tmp_path / 'my layout.json'}: loaded as 'my layout' version 1 (1 changes)"
            assert said[1].endswith("panel 'graph-2' not loaded: its content is gone: blob cccccccccccc is not on the relay")
            await eventually(lambda: engine.room.panels["graph-1"].transform.position == (4.0, 2.0, 1.0))
        finally:
            await asyncio.to_thread(user.close)
