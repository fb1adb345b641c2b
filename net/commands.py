"""Command-line part of the relay: `deeproom serve` and `deeproom bench relay`.

Light at import (argparse only); the relay's libraries load when a command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from deeproom.config import Config


def register(commands: Any, bench: Any) -> None:
    p = commands.add_parser("serve", help="run a relay: many rooms, websocket clients (python-socketio)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--db", help="SQLite store for rooms (default: DATA_DIR/deeproom.sqlite3)")
    p.add_argument("--redis", metavar="URL", help="keep rooms in Redis so several relays serve them together")
    p.add_argument("--tick-hz", type=float, default=30.0, help="presence batches per second per room (default 30)")
    p.add_argument("--leave-grace", type=float, default=10.0,
                   help="seconds a disconnected participant stays in the room (default 10)")
    p.add_argument("--capacity", type=int, default=32, help="capacity of rooms created on this relay (default 32)")
    p.add_argument("--record", action="store_true",
                   help="record every room (each room's 'recording' setting is switched on; DATA_DIR/recordings)")
    p.add_argument("--sfu", metavar="URL|auto",
                   help="the voice SFU announced to every client (teaching rooms above 6 voices use it): "
                        "a running Janus's URL (http://HOST:8088/janus), or 'auto' to start Janus here "
                        "(stopped with the relay; needs `apt-get install janus`)")
    p.add_argument("--sfu-address", metavar="ADDR",
                   help="with --sfu auto: the address Janus serves and offers to clients (default: --host if it "
                        "is one non-loopback address, else this machine's first global IPv4 address)")
    p.add_argument("--sfu-port", type=int, default=8088, help="with --sfu auto: Janus's HTTP port (default 8088)")
    policy = p.add_argument_group(
        "policy for strangers",
        "who may create rooms, and what one client address may use (clients behind one proxy or NAT share an address)",
    )
    policy.add_argument("--room-creation", choices=("open", "token"), default="open",
                        help="open: joining a room that does not exist creates it (default); "
                             "token: only joins that carry --create-token do (RoomClient(create_token=...))")
    policy.add_argument("--create-token", metavar="SECRET", help="the room creation token (needed with --room-creation token)")
    policy.add_argument("--connections-per-address", type=int, default=256, metavar="N",
                        help="sockets one address may have open at once (default 256)")
    policy.add_argument("--joins-per-address", type=float, default=10.0, metavar="N",
                        help="join attempts per second from one address, in bursts of 6N (default 10)")
    policy.add_argument("--rooms-per-address", type=float, default=20.0, metavar="N",
                        help="rooms one address may create per hour (default 20)")
    policy.add_argument("--password-attempts-per-address", type=float, default=8.0, metavar="N",
                        help="password joins one address may try at once, then one per 2 s (default 8)")
    policy.add_argument("--uploads-per-address", type=int, default=4, metavar="N",
                        help="blob uploads one address may have in progress at once (default 4)")
    policy.add_argument("--upload-mb-per-address", type=float, default=1024.0, metavar="MB",
                        help="blob megabytes one address may upload per hour (default 1024)")
    p.set_defaults(func=cmd_serve)

    b = bench.add_parser("relay", help="poses through a real relay from N real clients in other processes")
    b.add_argument("--clients", type=int, default=30, help="participants in one room (default 30)")
    b.add_argument("--rate", type=float, default=30.0, help="poses per second per client (default 30)")
    b.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    b.add_argument("--sweep", action="store_true",
                   help="also run 10..--sweep-max clients on one node: the largest N holding p99 <= 100 ms "
                        "before two sizes in a row miss, and the relay's cost per client tick and per entry")
    b.add_argument("--sweep-max", type=int, default=300, help="largest room size the sweep tries (default 300)")
    b.add_argument("--nodes", type=int, default=1,
                   help="also run the same load split across this many relay processes sharing the room through "
                        "a real redis-server: cross-node p99, per-node CPU, Redis CPU (default 1: off)")
    b.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    b.add_argument("--memory-seconds", type=float, default=0.0,
                   help="also run this long at the given load and report relay RSS at start and end")
    b.add_argument("--no-baseline", action="store_true", help="skip the naive forward-every-pose relay")
    b.add_argument("--tick-hz", type=float, default=30.0, help="the relay's presence batches per second (default 30)")
    b.add_argument("--pose-frames", type=int, nargs="+", choices=(1, 2), default=[1], metavar="1|2",
                   help="how the clients send poses: 1 = compact pose (one websocket frame), 2 = the two-frame "
                        "`pose` event (older clients); default 1. Two values (e.g. 1 2): the main load also runs "
                        "with the other form in the same invocation and both us_per_batch are reported "
                        "(every other run uses the first)")
    b.add_argument("--compare-rounds", type=int, default=1, metavar="N",
                   help="with two --pose-frames: runs per form, alternating (default 1)")
    b.add_argument("--hostile", type=int, nargs="?", const=10, default=0, metavar="N",
                   help="also run with N hostile clients (default 10) cycling through refused messages, floods, "
                        "join storms and upload hoarding; compares p99 and counts stored-state changes")
    b.set_defaults(func=cmd_bench_relay)

    w = bench.add_parser("web", help="the browser client in headless Chromium: join, moves, fps, voice from aiortc")
    w.add_argument("--moves", type=int, default=200, help="panel moves by the Python host (default 200)")
    w.add_argument("--move-hz", type=float, default=20.0, help="moves per second (default 20)")
    w.add_argument("--fps-seconds", type=float, default=5.0, help="seconds of frame counting (default 5)")
    w.add_argument("--voice-seconds", type=float, default=8.0, help="seconds of 440 Hz bursts (default 8)")
    w.add_argument("--width", type=int, default=1280, help="page width in pixels (default 1280)")
    w.add_argument("--height", type=int, default=720, help="page height in pixels (default 720)")
    w.add_argument("--relay", choices=("process", "embedded"), default="process",
                   help="the relay as its own process (default, as deployed) or inside this process")
    w.add_argument("--quality", choices=("auto", "full", "both"), default="auto",
                   help="the page's render resolution: auto (adapts to frame cost, default), full, or both "
                        "(fps and moves in alternating blocks; full's keys end in _full)")
    w.set_defaults(func=cmd_bench_web)


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import asyncio
    import logging
    import signal
    from pathlib import Path

    from deeproom.net.server import RelayServer, RelaySettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.room_creation == "token" and not args.create_token:
        print("deeproom serve: --room-creation token needs --create-token SECRET", flush=True)
        return 2
    upload_bytes = args.upload_mb_per_address * 1024 * 1024
    sfu_url = None if args.sfu in (None, "auto") else args.sfu
    if sfu_url is not None and not sfu_url.startswith(("http://", "https://")):
        print(f"deeproom serve: --sfu is a Janus URL (http://HOST:8088/janus) or 'auto'; got {sfu_url!r}", flush=True)
        return 2
    settings = RelaySettings(
        data_dir=config.data_dir,
        host=args.host,
        port=args.port,
        db_path=Path(args.db) if args.db else None,
        redis_url=args.redis,
        tick_hz=args.tick_hz,
        leave_grace_s=args.leave_grace,
        capacity=args.capacity,
        blob_max_bytes=config.blob_max_bytes,
        store_max_bytes=config.store_max_bytes,
        connections_per_address=args.connections_per_address,
        joins_per_address=(args.joins_per_address, 6 * args.joins_per_address),
        room_creation=args.room_creation,
        create_token=args.create_token,
        rooms_per_address=(args.rooms_per_address, args.rooms_per_address),
        password_checks_per_address=(0.5, args.password_attempts_per_address),
        uploads_per_address=args.uploads_per_address,
        upload_bytes_per_address=(upload_bytes, upload_bytes),
        sfu_url=sfu_url,
        record=args.record,
    )

    async def main() -> None:
        import contextlib
        import dataclasses

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with contextlib.AsyncExitStack() as stack:
            relay_settings = settings
            if args.sfu == "auto":
                from deeproom.net.voice.janus import JanusServer, server_address

                janus = await stack.enter_async_context(
                    JanusServer(server_address(args.sfu_address or args.host), http_port=args.sfu_port)
                )
                print(f"deeproom SFU (janus pid {janus.pid}) at {janus.url}", flush=True)
                relay_settings = dataclasses.replace(settings, sfu_url=janus.url)
            relay = await stack.enter_async_context(RelayServer(relay_settings))
            print(f"deeproom relay listening on {relay.url}" + (f", voice SFU {relay_settings.sfu_url}"
                                                               if relay_settings.sfu_url else ""), flush=True)
            print(f"browsers join at {relay.url}/r/ROOM (or open {relay.url}/)", flush=True)
            await stop.wait()
        print("deeproom relay stopped", flush=True)

    try:
        asyncio.run(main())
    except Exception as exc:  # e.g. the SFU could not start: say why, no traceback
        from deeproom.errors import DeepRoomError

        if not isinstance(exc, DeepRoomError):
            raise
        print(f"deeproom serve: {exc}", flush=True)
        return 1
    return 0


def cmd_bench_relay(args: argparse.Namespace, config: Config) -> int:
    from deeproom.net.bench_relay import run_bench

    return run_bench(args, config)


def cmd_bench_web(args: argparse.Namespace, config: Config) -> int:
    from deeproom.net.bench_web import run_bench

    return run_bench(args, config)


def doctor_checks() -> list[tuple[str, Callable[[], str]]]:
    def socketio_version() -> str:
        import importlib.metadata

        return "python-socketio " + importlib.metadata.version("python-socketio")

    def redis_server() -> str:
        import shutil

        path = shutil.which("redis-server")
        return f"redis-server at {path}" if path else "redis-server not installed (only needed for --redis tests)"

    return [("relay", socketio_version), ("redis-server", redis_server)]
