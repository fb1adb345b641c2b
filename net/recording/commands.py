"""Command-line part of recording: `deeproom record list|export|import|delete`,
`deeproom replay RECORDING` and `deeproom bench replay`.

Light at import (argparse only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from deeproom.config import Config


def register(commands: Any, bench: Any) -> None:
    r = commands.add_parser("record", help="recordings the relay made (DATA_DIR/recordings): list, export, import, delete")
    sub = r.add_subparsers(dest="record_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="recordings with their room, length, size and any damage").set_defaults(func=cmd_list)
    e = sub.add_parser("export", help="write one recording as one archive file")
    e.add_argument("recording")
    e.add_argument("file", help="the archive to write (e.g. lecture.drrec.tar)")
    e.set_defaults(func=cmd_export)
    i = sub.add_parser("import", help="add an exported recording to this machine's recordings")
    i.add_argument("file")
    i.add_argument("--as", dest="as_id", metavar="ID", help="store it under this id (default: its own)")
    i.set_defaults(func=cmd_import)
    d = sub.add_parser("delete", help="remove a recording, its voice and the blobs no other recording uses")
    d.add_argument("recording")
    d.set_defaults(func=cmd_delete)

    p = commands.add_parser("replay", help="play a recording back as a read-only room with a timeline panel "
                                           "(window, or an offscreen snapshot; --text prints it instead); "
                                           "with --relay and --room, watch it together with others",
                            description="Keys in the replay: space play/pause, 1-4 speed, Tab brings the timeline "
                                        "in front of you, G turns off (and on) being moved by recorded summons. "
                                        "Watching together: the host of a watch room runs `deeproom replay "
                                        "RECORDING --relay URL --room ROOM` (the recording goes to the others "
                                        "through the relay) and drives the timeline; everyone else runs `deeproom "
                                        "replay --relay URL --room ROOM` and follows. The host hands control by "
                                        "making someone presenter (People panel, P).")
    p.add_argument("recording", nargs="?", help="a recording id (see `deeproom record list`) or a timeline file; "
                                                "with --relay: the one to share (omit it to follow the room's)")
    p.add_argument("--at", default="0:00", metavar="MM:SS", help="start here (default 0:00)")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed (default 1)")
    p.add_argument("--text", action="store_true", help="print the room once a recorded second instead of opening it")
    p.add_argument("--seconds", type=float, default=None,
                   help="print (as --text) this many recorded seconds (default: to the end)")
    p.add_argument("--headless", action="store_true", help="render offscreen (EGL) and write a PNG snapshot")
    p.add_argument("--frames", type=int, default=30, help="frames rendered before the snapshot (headless)")
    p.add_argument("--snapshot", metavar="PNG", help="where the snapshot goes (headless; default snapshots/replay.png)")
    p.add_argument("--size", default="1280x720", help="window or image size WxH (default 1280x720)")
    p.add_argument("--no-summons", action="store_true",
                   help="recorded summons do not move you (by default playing past one moves you as it did live)")
    p.add_argument("--relay", metavar="URL", help="watch together in a room on this relay (http://HOST:PORT)")
    p.add_argument("--room", help="the watch room (with --relay); its host drives the timeline")
    p.add_argument("--name", default="You", help="your name in the watch room (default You)")
    p.set_defaults(func=cmd_replay)

    b = bench.add_parser("replay", help="recording cost on a real relay, seek time in a synthetic 60-minute recording")
    b.add_argument("--clients", type=int, default=30, help="participants streaming poses (default 30)")
    b.add_argument("--rate", type=float, default=30.0, help="poses per second per client (default 30)")
    b.add_argument("--seconds", type=float, default=5.0,
                   help="seconds per window of the relay run, recording off and on in turn (default 5)")
    b.add_argument("--windows", type=int, default=9, help="windows in the relay run, odd: off first and last (default 9)")
    b.add_argument("--settle", type=float, default=1.0, help="seconds discarded after each switch (default 1)")
    b.add_argument("--minutes", type=float, default=60.0, help="length of the synthetic recording (default 60)")
    b.add_argument("--seeks", type=int, default=50, help="random seeks measured (default 50)")
    b.add_argument("--no-relay", action="store_true", help="skip the relay run (seek, size and voice only)")
    b.set_defaults(func=cmd_bench_replay)


def _store(config: Config) -> Any:
    from deeproom.net.recording.store import RecordingStore

    return RecordingStore(config.data_dir / "recordings")


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    from deeproom.recording import format_clock

    infos = _store(config).all()
    if not infos:
        print(f"no recordings in {config.data_dir / 'recordings'}")
    for i in infos:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.started_wall)) if i.started_wall else "?"
        line = (f"{i.id}  room {i.room_id}  {started}  {format_clock(i.duration)}  {i.bytes / 1e6:.1f} MB  "
                f"{i.chapters} chapters  {i.blobs} blobs  {i.voice_segments} voice segments")
        if i.follows:
            line += f"  continues {i.follows} (another relay node recorded the room until it stopped)"
        if i.damage:
            line += f"  DAMAGED: {i.damage}"
        print(line)
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    path = _store(config).export(args.recording, args.file)
    print(f"exported {args.recording} to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    result = _store(config).import_(args.file, args.as_id)
    print(f"imported {args.file} as {result.id}")
    for d in result.damage:
        print(f"  damaged: {d}")
    return 1 if result.damage else 0


def cmd_delete(args: argparse.Namespace, config: Config) -> int:
    removed = _store(config).delete(args.recording)
    print(f"deleted {args.recording} and {len(removed)} blobs (content and voice) no other recording uses")
    return 0


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from deeproom.recording import Player, format_clock, parse_clock, read_timeline

    if args.relay or args.room:
        return _watch_together(args, config)
    if not args.recording:
        print("deeproom replay: give a RECORDING (or --relay URL --room ROOM to follow a shared replay)")
        return 2
    path = Path(args.recording)
    tl = read_timeline(path) if path.is_file() else _store(config).open(args.recording)
    if tl.damage:
        print(f"damaged: {tl.damage}")
    if args.speed <= 0 or args.speed > 64:
        print(f"--speed must be in (0, 64]; got {args.speed:g}")
        return 2
    start = parse_clock(args.at)
    if not args.text and args.seconds is None:
        # The room in the app; scenes (Ursina) load only here, never when net/ is imported.
        from deeproom.scenes.commands import _size
        from deeproom.scenes.replay import run_replay
        from deeproom.scenes.runner import RunSettings, decide_headless

        store_blobs = config.data_dir / "recordings" / "blobs"
        run = RunSettings(headless=decide_headless(args.headless), frames=max(1, args.frames),
                          snapshot=Path(args.snapshot) if args.snapshot else None, size=_size(args.size))
        return int(run_replay(tl, at=start, speed=args.speed, run=run,
                              blobs_dir=None if path.is_file() else store_blobs, summons=not args.no_summons))
    player = Player(tl)
    print(f"recording of room {tl.room_id!r}: {format_clock(tl.duration)}, chapters: "
          + (", ".join(f"{format_clock(c.t)} {c.title}" for c in tl.chapters) or "none"))
    end = tl.duration if args.seconds is None else min(tl.duration, start + args.seconds)
    t = start
    state = player.seek(t)
    wall = time.monotonic()
    while True:
        room = state.room
        print(f"{format_clock(t)}  {len(room.panels)} panels, {len(room.participants)} participants, "
              f"{len(state.poses)} avatars" + ("  (recording)" if room.settings.recording else ""), flush=True)
        if t >= end:
            break
        t = min(end, t + 1.0)
        time.sleep(max(0.0, wall + (t - start) / args.speed - time.monotonic()))
        state = player.advance(t)
    player.close()
    return 0


def _watch_together(args: argparse.Namespace, config: Config) -> int:
    """`deeproom replay [RECORDING] --relay URL --room ROOM`: drive (share RECORDING) or follow."""
    from deeproom.net.recording.store import RecordingStore
    from deeproom.recording import parse_clock

    if not (args.relay and args.room):
        print("deeproom replay: watching together needs both --relay URL and --room ROOM")
        return 2
    if args.text or args.seconds is not None:
        print("deeproom replay: --text prints a recording alone; it does not join a watch room")
        return 2
    if args.speed <= 0 or args.speed > 64:
        print(f"--speed must be in (0, 64]; got {args.speed:g}")
        return 2
    store, rid = _store(config), args.recording
    if rid is not None and Path(rid).is_file():  # a timeline file: its own store (recordings/<id>/timeline.drrec)
        store, rid = RecordingStore(Path(rid).resolve().parent.parent), Path(rid).resolve().parent.name
    if rid is not None:
        store.timeline_path(rid)  # a clear error now, not after joining
    from deeproom.scenes.commands import _size
    from deeproom.scenes.replay_watch import open_watch, run_watch
    from deeproom.scenes.runner import RunSettings, decide_headless

    run = RunSettings(headless=decide_headless(args.headless), frames=max(1, args.frames),
                      snapshot=Path(args.snapshot) if args.snapshot else None, size=_size(args.size))
    session = open_watch(args.relay, args.room, args.name, store, rid, at=parse_clock(args.at), speed=args.speed,
                         summons=not args.no_summons)
    return int(run_watch(session, run))


def cmd_bench_replay(args: argparse.Namespace, config: Config) -> int:
    from deeproom.net.recording.bench import run_bench

    result = run_bench(clients=args.clients, rate=args.rate, seconds=args.seconds, minutes=args.minutes,
                       seeks=args.seeks, relay=not args.no_relay, windows=args.windows, settle=args.settle)
    print(json.dumps(result))
    return 0
