"""Recording on a real relay with real clients, read back by the timeline reader; archives."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from deeproom.errors import DeepRoomError, PermissionDenied
from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.recording import RecordingStore, hooks
from deeproom.net.recording.store import ARCHIVE_FORMAT
from deeproom.presence import PointerRay, Pose
from deeproom.recording import FORMAT_VERSION, NewerFormat, Player, RecordingError, read_timeline
from tests.net.conftest import eventually

TICK = 1 / 30


def _pos(room: Any, pid: str) -> tuple[float, ...]:
    return tuple(round(v, 4) for v in room.panels[pid].transform.position)


async def _record_session(data_dir: Path) -> dict[str, Any]:
    """Two clients: panel moves, poses with a laser, a summon. Returns what the observer saw live, timed
    on the recorder's clock."""
    live: dict[str, Any] = {"panels": [], "poses": []}
    async with EmbeddedRelay(data_dir=data_dir, leave_grace_s=0.5) as relay, \
            RoomClient(relay.url, room="lecture", name="Host") as host, \
            RoomClient(relay.url, room="lecture", name="Bo") as bo:
        if True:  # keeps the session's body at one indent
            await eventually(lambda: bo.participant_id in host.room.participants)
            await host.apply({"op": "add_panel", "panel_id": "p1", "kind": "metrics", "title": "Loss"})
            with pytest.raises(PermissionDenied):
                await bo.apply({"op": "set_recording", "recording": True})  # only the host may
            await host.apply({"op": "set_recording", "recording": True})
            await eventually(lambda: bo.room.settings.recording)  # everyone sees it
            room = relay.server.rooms["lecture"]
            rec = hooks.recorder_of(room)
            assert rec is not None
            seen: dict[str, Pose] = {}
            bo.on_poses(lambda poses: seen.update(poses))
            for i in range(12):
                x = 0.25 * i
                await host.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [x, 1.5, 2.0]}})
                host.publish_pose(Pose(head_position=(x, 1.6, -1.0),
                                       pointer=PointerRay((x, 1.2, -1.0), (0.0, 0.0, 1.0))))
                await eventually(lambda x=x: _pos(bo.room, "p1")[0] == round(x, 4))
                await eventually(lambda x=x: host.participant_id in seen
                                 and abs(seen[host.participant_id].head_position[0] - x) < 1e-4)
                live["panels"].append((rec.now(), _pos(bo.room, "p1")))
                live["poses"].append((rec.now(), seen[host.participant_id].head_position))
                if i == 6:
                    await host.send_event("summon", {"panel_id": "p1"})
                await asyncio.sleep(0.15)
            # a joiner during recording is told by the room it receives on joining
            async with RoomClient(relay.url, room="lecture", name="Late") as late:
                assert late.room.settings.recording
            live["host"] = host.participant_id
            live["duration"] = rec.now()
            await host.apply({"op": "set_recording", "recording": False})
            assert hooks.recorder_of(room) is None
            live["id"] = rec.id
    return live


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data = tmp_path_factory.mktemp("rec") / "relay"
    live = asyncio.run(_record_session(data))
    return data, live


def test_recording_holds_what_was_live(recorded: tuple[Path, dict[str, Any]]) -> None:
    data, live = recorded
    store = RecordingStore(data / "recordings")
    assert store.ids() == [live["id"]]
    tl = store.open(live["id"])
    assert tl.damage is None and tl.ended == "stopped by the host"
    assert [c.kind for c in tl.chapters] == ["summon"]
    assert any(e.kind == "summon" and e.payload == {"panel_id": "p1"} for e in tl.events)
    player = Player(tl)
    for t, pos in live["panels"]:
        # within one tick: the state one tick after the moment observed live shows what was live
        got = {_pos(player.seek(t + dt).room, "p1") for dt in (-TICK, 0.0, TICK)}
        assert pos in got, (t, pos, got)
    for t, head in live["poses"]:
        got = [player.seek(t + dt).poses.get(live["host"]) for dt in (0.0, TICK, 2 * TICK)]
        assert any(p is not None and max(abs(a - b) for a, b in zip(p.head_position, head, strict=True)) < 1e-3
                   for p in got), (t, head, got)
        assert any(p is not None and p.pointer is not None for p in got)  # the laser too
    assert player.seek(tl.duration).room.settings.recording is False  # the switch off is the last update
    player.close()


def test_seek_equals_playing(recorded: tuple[Path, dict[str, Any]]) -> None:
    data, live = recorded
    tl = RecordingStore(data / "recordings").open(live["id"])
    middle = tl.duration / 2
    played = Player(tl)
    t = 0.0
    while t < middle:
        t = min(middle, t + TICK)
        played.advance(t)
    sought = Player(tl).seek(middle)
    assert played.state.room.panels == sought.room.panels
    assert played.state.room.settings == sought.room.settings
    assert played.state.poses == sought.poses


def test_export_import_delete(recorded: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    data, live = recorded
    store = RecordingStore(data / "recordings")
    archive = store.export(live["id"], tmp_path / "lecture.drrec.tar")
    elsewhere = RecordingStore(tmp_path / "other" / "recordings")
    result = elsewhere.import_(archive)
    assert result.damage == []
    a, b = store.open(live["id"]), elsewhere.open(result.id)
    for t in (0.5, a.duration / 3, a.duration * 0.9):
        pa, pb = Player(a).seek(t), Player(b).seek(t)
        assert pa.room.panels == pb.room.panels and pa.poses == pb.poses
    # a second copy shares blobs by hash; deleting one keeps what the other references
    again = elsewhere.import_(archive)
    assert again.id != result.id
    elsewhere.delete(result.id)
    assert elsewhere.ids() == [again.id]


def test_delete_removes_unreferenced_blobs(tmp_path: Path) -> None:
    async def run() -> str:
        async with EmbeddedRelay(data_dir=tmp_path / "relay", leave_grace_s=0.5) as relay, \
                RoomClient(relay.url, room="r", name="Host") as host:
            if True:
                sha = await host.put_blob(b"panel content " * 100)
                assert sha == hashlib.sha256(b"panel content " * 100).hexdigest()
                await host.apply({"op": "add_panel", "panel_id": "p1", "kind": "image", "title": "img",
                                  "content": {"source": {"type": "test"}, "refs": [sha]}})
                await host.apply({"op": "set_recording", "recording": True})
                await host.apply({"op": "set_recording", "recording": False})
                return sha

    sha = asyncio.run(run())
    store = RecordingStore(tmp_path / "relay" / "recordings")
    (rid,) = store.ids()
    assert store.open(rid).blobs == [sha] and store.blob_path(sha).is_file()
    assert store.delete(rid) == [sha]
    assert not store.blob_path(sha).exists() and store.ids() == []


def test_damaged_recordings(recorded: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    data, live = recorded
    store = RecordingStore(data / "recordings")
    path = store.timeline_path(live["id"])
    raw = path.read_bytes()
    # a flipped byte in the second half: the first part plays, the damage is named
    broken = tmp_path / "broken.drrec"
    at = len(raw) * 2 // 3
    broken.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    tl = read_timeline(broken)
    assert tl.damage is not None and "byte" in tl.damage and "intact" in tl.damage
    assert 0 < tl.duration < read_timeline(path).duration
    assert _pos(Player(tl).seek(tl.duration / 2).room, "p1") == _pos(
        Player(read_timeline(path)).seek(tl.duration / 2).room, "p1")
    # a cut-off archive imports what it holds and names the rest
    archive = store.export(live["id"], tmp_path / "a.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: 512 * 3 + len(raw) // 2])
    result = RecordingStore(tmp_path / "cutstore").import_(cut)
    assert any("cut off" in d for d in result.damage), result.damage
    assert RecordingStore(tmp_path / "cutstore").open(result.id).duration > 0
    # newer format versions are refused with the version they need
    newer = tmp_path / "newer.drrec"
    newer.write_bytes(raw[:6] + (FORMAT_VERSION + 1).to_bytes(2, "little") + raw[8:])
    with pytest.raises(NewerFormat, match=f"version {FORMAT_VERSION + 1}"):
        read_timeline(newer)
    with pytest.raises(RecordingError, match="not a DeepRoom recording"):
        read_timeline(tmp_path / "a.tar")
    assert ARCHIVE_FORMAT in (tmp_path / "a.tar").read_bytes()[:2048].decode("latin-1")


def test_an_archive_naming_things_that_are_not_blob_ids_is_refused_or_skipped(tmp_path: Path) -> None:
    """Members and manifest entries must be exactly 64 hex digits: a trailing newline or a path after
    them is not a blob (an archive may come from anyone, a watch party's driver included)."""
    import io
    import json
    import tarfile

    sha = "ab" * 32

    def archive(name: str, manifest_blobs: list[str]) -> Path:
        path = tmp_path / f"a{len(list(tmp_path.iterdir()))}.tar"
        with tarfile.open(path, "w") as tar:
            for member, data in (
                ("manifest.json", json.dumps({"format": ARCHIVE_FORMAT, "version": 1, "id": "x",
                                              "blobs": manifest_blobs}).encode()),
                (name, b"not a blob"),
            ):
                ti = tarfile.TarInfo(member)
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
        return path

    with pytest.raises(RecordingError, match="recording id"):  # an id may not end in a newline either
        RecordingStore(tmp_path / "s0").import_(archive("timeline.drrec", []), rid="x\n")
    with pytest.raises(RecordingError, match="not sha256 ids"):
        RecordingStore(tmp_path / "s1").import_(archive("timeline.drrec", [sha + "\n"]))
    for name in (f"blobs/{sha}\n", f"blobs/{sha}/../../escape", f"voice/{sha}/x"):
        store = RecordingStore(tmp_path / "s2")
        with pytest.raises(RecordingError, match="no timeline"):
            store.import_(archive(name, []))
        assert not (tmp_path / "escape").exists()
        assert not any(p.name.startswith(".blob-") for p in (tmp_path / "s2").rglob("*"))


def test_disk_full_stops_recording_room_goes_on(tmp_path: Path) -> None:
    """A recorder whose writes fail (a full disk: /dev/full) stops, the host is told, the room goes on."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")

    async def run() -> None:
        async with EmbeddedRelay(data_dir=tmp_path / "relay", leave_grace_s=0.5) as relay, \
                RoomClient(relay.url, room="r", name="Host") as host:
            if True:
                errors: list[DeepRoomError] = []
                host.on_error(errors.append)
                await host.apply({"op": "add_panel", "panel_id": "p1", "kind": "metrics", "title": "Loss"})
                await host.apply({"op": "set_recording", "recording": True})
                rec = hooks.recorder_of(relay.server.rooms["r"])
                assert rec is not None
                written = rec.writer.path
                rec.writer.close()
                rec.writer._fh = open("/dev/full", "wb")  # noqa: SIM115 - the disk is now full
                for i in range(3):
                    host.publish_pose(Pose(head_position=(float(i), 1.6, 0.0)))
                    await host.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [i, 1.5, 2.0]}})
                await eventually(lambda: not host.room.settings.recording)
                await eventually(lambda: any("could not write" in str(e) for e in errors))
                assert hooks.recorder_of(relay.server.rooms["r"]) is None
                room = await host.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [9, 1.5, 2.0]}})
                assert room.panels["p1"].transform.position[0] == 9  # the room goes on
                tl = read_timeline(written)  # what was written stays readable
                assert tl.snapshots

    asyncio.run(run())



def test_a_header_with_hostile_fields_is_damage_named_and_the_list_goes_on(tmp_path: Path) -> None:
    """A recording's header is shown by `record list` and the replay's title (a recording may come
    from anyone, by import): ids must be ids, times numbers; a takeover's `follows` is listed."""
    import subprocess
    import sys

    from deeproom.document import new_room
    from deeproom.recording import SNAPSHOT, TimelineWriter, encode_snapshot

    store = RecordingStore(tmp_path / "data" / "recordings")
    doc = new_room("lecture", name="lecture", host_id="host", host_name="Host")

    def write(rid: str, header: dict[str, Any]) -> Path:
        (store.root / rid).mkdir(parents=True)
        w = TimelineWriter(store.root / rid / "timeline.drrec", header)
        w.append(SNAPSHOT, 0.0, encode_snapshot(0, doc.update_since(None)))
        w.close()
        return store.root / rid / "timeline.drrec"

    write("good", {"room_id": "lecture", "started_wall": 1.8e9})
    write("second", {"room_id": "lecture", "started_wall": 1.8e9, "follows": "good", "node": "ab12"})
    hostile = {
        "wall": {"room_id": "lecture", "started_wall": "soon"},
        "inf": {"room_id": "lecture", "started_wall": float("inf")},
        "escape": {"room_id": "\x1b[2J\x1b[31mpwned", "started_wall": 1.0},
        "follow": {"room_id": "lecture", "follows": "../good\n"},
        "deep": {"room_id": "lecture", "node": [[[[1]]]]},
    }
    for rid, header in hostile.items():
        path = write(rid, header)
        with pytest.raises(RecordingError, match="damaged header"):
            read_timeline(path)
    out = subprocess.run([sys.executable, "-m", "deeproom.cli", "--data-dir", str(tmp_path / "data"), "record", "list"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines()}
    assert "DAMAGED" not in lines["good"] and "continues good" in lines["second"]
    for rid in hostile:
        assert "DAMAGED" in lines[rid] and "damaged header" in lines[rid], lines[rid]
    assert "\x1b" not in out.stdout and "Traceback" not in out.stderr


def test_commands(recorded: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    import subprocess
    import sys

    data, live = recorded

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "deeproom.cli", "--data-dir", str(data), *args],
                              capture_output=True, text=True, timeout=120)

    out = cli("record", "list")
    assert out.returncode == 0 and live["id"] in out.stdout and "1 chapters" in out.stdout, out
    out = cli("replay", live["id"], "--at", "0:01", "--speed", "64", "--seconds", "2")
    assert out.returncode == 0 and "summon to p1" in out.stdout and "1 panels" in out.stdout, out
    out = cli("record", "export", live["id"], str(tmp_path / "x.tar"))
    assert out.returncode == 0 and (tmp_path / "x.tar").is_file(), out
