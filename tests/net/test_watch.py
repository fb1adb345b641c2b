"""A shared replay's `watch` events and recording transfer on a real relay with real clients.

The relay forwards `watch` only from a host or presenter and checks every field; a follower
fetches the driver's recording through the relay's blobs (checked by hash) or uses its own
copy; a tampered manifest is refused.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from deeproom.errors import PermissionDenied, ValidationError
from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.recording import RecordingStore, hooks
from deeproom.net.recording.watch import (
    WatchManifest,
    WatchState,
    fetch_recording,
    file_sha256,
    parse_watch,
    share_recording,
)
from deeproom.recording import RecordingError
from tests.net.conftest import eventually

SHA = "ab" * 32


async def _record(data_dir: Path) -> str:
    async with EmbeddedRelay(data_dir=data_dir, leave_grace_s=0.5) as relay, \
            RoomClient(relay.url, room="lecture", name="Host") as host:
        await host.apply({"op": "add_panel", "panel_id": "p1", "kind": "metrics", "title": "Loss"})
        await host.apply({"op": "set_recording", "recording": True})
        rec = hooks.recorder_of(relay.server.rooms["lecture"])
        assert rec is not None
        for i in range(4):
            await host.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [0.3 * i, 1.5, 2.0]}})
            await asyncio.sleep(0.1)
        await host.apply({"op": "set_recording", "recording": False})
        return rec.id


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[RecordingStore, str]:
    data = tmp_path_factory.mktemp("watch") / "rec"
    rid = asyncio.run(_record(data))
    return RecordingStore(data / "recordings"), rid


def test_parse_watch_accepts_the_state_and_refuses_the_rest() -> None:
    ok = {"recording": SHA, "t": 12.5, "playing": True, "speed": 2.0, "duration": 60.0}
    assert parse_watch(ok) == WatchState(SHA, 12.5, True, 2.0, 60.0, False)
    assert parse_watch(WatchState(SHA, 1.0, False, 0.5, 2.0, True).to_payload()).jump
    bad: list[tuple[dict[str, Any], str]] = [
        ({**ok, "extra": 1}, "unknown watch field"),
        ({**ok, "recording": "../../etc"}, "sha256"),
        ({**ok, "t": 61.0}, "watch t must be in"),
        ({**ok, "t": -1}, "watch t must be in"),
        ({**ok, "speed": 0}, "watch speed must be in"),
        ({**ok, "speed": 65}, "watch speed must be in"),
        ({**ok, "duration": math.inf}, "finite"),
        ({**ok, "playing": 1}, "true or false"),
        ({**ok, "t": True}, "finite number"),
        ({**ok, "jump": "yes"}, "true or false"),
    ]
    for payload, message in bad:
        with pytest.raises(ValidationError, match=message):
            parse_watch(payload)
    with pytest.raises(ValidationError, match="object"):
        parse_watch([1, 2])


async def test_relay_forwards_watch_only_from_the_driver(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="party", name="Host") as host, \
            RoomClient(relay.url, room="party", name="Ann") as ann, \
            RoomClient(relay.url, room="party", name="Bo") as bo:
        got: dict[str, list[tuple[str, dict[str, Any]]]] = {"host": [], "ann": [], "bo": []}
        for name, c in (("host", host), ("ann", ann), ("bo", bo)):
            c.on_event("watch", lambda sender, payload, name=name: got[name].append((sender, payload)))
        await eventually(lambda: {ann.participant_id, bo.participant_id} <= set(host.room.participants))
        state = WatchState(SHA, 3.0, True, 1.0, 60.0).to_payload()
        await host.send_event("watch", state)
        await eventually(lambda: got["ann"] and got["bo"])
        assert got["ann"] == [(host.participant_id, state)] and got["host"] == []
        # a member cannot drive: refused at the relay, nobody hears it
        with pytest.raises(PermissionDenied, match="only the host or a presenter drives"):
            await ann.send_event("watch", {**state, "t": 50.0})
        # hostile payloads are refused field by field
        for payload in ({**state, "t": 99.0}, {**state, "speed": -1}, {**state, "cmd": "rm"}, {"recording": SHA}):
            with pytest.raises(ValidationError):
                await host.send_event("watch", payload)
        await asyncio.sleep(0.3)
        assert len(got["bo"]) == 1, got["bo"]
        # the host hands control: Ann, presenter now, drives
        await host.apply({"op": "set_role", "participant_id": ann.participant_id, "role": "presenter"})
        await eventually(lambda: ann.room.participants[ann.participant_id].role.value == "presenter")
        await ann.send_event("watch", {**state, "t": 50.0, "jump": True})
        await eventually(lambda: len(got["bo"]) == 2 and got["host"])
        assert got["bo"][1] == (ann.participant_id, {**state, "t": 50.0, "jump": True})


async def test_recording_travels_through_the_relay(recording: tuple[RecordingStore, str], relay: EmbeddedRelay,
                                                   tmp_path: Path) -> None:
    store, rid = recording
    async with RoomClient(relay.url, room="party", name="Host") as host, \
            RoomClient(relay.url, room="party", name="Ann") as ann:
        loop = asyncio.get_running_loop()

        def put(data: bytes) -> str:
            return asyncio.run_coroutine_threadsafe(host.put_blob(data), loop).result(60)

        fetched: list[str] = []

        def get(sha: str) -> bytes:
            fetched.append(sha)
            return asyncio.run_coroutine_threadsafe(ann.get_blob(sha), loop).result(60)

        sha, manifest = await asyncio.to_thread(share_recording, store, rid, put)
        assert manifest.timeline_sha256 == file_sha256(store.timeline_path(rid))
        mine = RecordingStore(tmp_path / "ann" / "recordings")
        got_id, got_manifest = await asyncio.to_thread(fetch_recording, mine, sha, get)
        assert got_manifest == manifest and got_id == rid
        assert file_sha256(mine.timeline_path(got_id)) == manifest.timeline_sha256
        assert mine.open(got_id).duration == store.open(rid).duration
        assert len(fetched) == 1 + len(manifest.pieces)
        # a second time (or a watcher who imported it before): nothing but the manifest is fetched
        fetched.clear()
        again, _ = await asyncio.to_thread(fetch_recording, mine, sha, get)
        assert again == rid and fetched == [sha]
        # a tampered manifest (pieces that are not the archive it names) is refused, nothing kept
        bad = WatchManifest("other", "lecture", manifest.duration, "cd" * 32, 10, manifest.archive_sha256,
                            manifest.archive_bytes, (manifest.pieces[0], manifest.pieces[0]))
        bad_sha = await host.put_blob(bad.encode())
        with pytest.raises(RecordingError, match=r"more than|damaged"):
            await asyncio.to_thread(fetch_recording, RecordingStore(tmp_path / "cy"), bad_sha, get)
        assert not (tmp_path / "cy").exists() or RecordingStore(tmp_path / "cy").ids() == []
        with pytest.raises(RecordingError, match="not a deeproom-watch manifest"):
            await asyncio.to_thread(fetch_recording, mine, await host.put_blob(b'{"format": "x"}'), get)


def test_replay_command_says_what_watching_together_needs(tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "deeproom.cli", "--data-dir", str(tmp_path), "replay", *args],
                              capture_output=True, text=True, timeout=120)

    p = run()
    assert p.returncode == 2 and "give a RECORDING" in p.stdout, p
    p = run("--relay", "http://127.0.0.1:9")
    assert p.returncode == 2 and "needs both --relay URL and --room ROOM" in p.stdout, p
    p = run("--relay", "http://127.0.0.1:9", "--room", "r", "--text")
    assert p.returncode == 2 and "--text" in p.stdout, p
    p = run("nope", "--relay", "http://127.0.0.1:9", "--room", "r")  # before joining: no such recording
    assert p.returncode != 0 and "no recording 'nope'" in (p.stdout + p.stderr), p
