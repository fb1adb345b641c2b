"""Command-line part of the scenes: `demo`, `open`, `join` and `bench render`.

Light at import (argparse only); Ursina, torch and the relay load when a command runs.
Without a display (no DISPLAY) or with --headless, rooms render offscreen (EGL) and
PNG snapshots are written; with one, a desktop window opens.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deeproom.config import Config


def _view_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--headless", action="store_true", help="render offscreen (EGL) and write PNG snapshots")
    p.add_argument("--frames", type=int, default=30, help="frames to render before each snapshot (headless)")
    p.add_argument("--snapshot", metavar="PNG", help="write one snapshot here (headless; default: ./snapshots/)")
    p.add_argument("--size", default="1280x720", help="window or image size WxH (default 1280x720)")
    p.add_argument("--xr", action="store_true", help="show the room in an OpenXR headset when one is available")
    p.add_argument("--name", default="You", help="your display name")
    p.add_argument("--no-voice", action="store_true",
                   help="join without voice (voice is on in a window: M mutes, hold space to talk)")


def register(commands: Any, bench: Any) -> None:
    p = commands.add_parser("demo", help="a room with a digits CNN trained in seconds and every panel kind "
                                         "(window, or offscreen snapshots without a display)")
    _view_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", help="a relay URL to host the demo room on (default: an embedded relay)")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("open", help="open one or more models (ONNX, TorchScript, checkpoints) side by side in a new room")
    p.add_argument("models", nargs="+", metavar="MODEL")
    _view_args(p)
    p.add_argument("--room", default=None, help="room id (default: open-<random>)")
    p.add_argument("--server", help="a relay URL (default: an embedded relay)")
    p.add_argument("--data", metavar="PATH", help="your data: an image folder with one sub-folder per class, "
                   ".npz (x, y[, classes]) or IDX files; without it analyses run on a built-in digit")
    p.add_argument("--resize", metavar="HxW", help="resize images to this size (default: the size in the sidecar "
                   "NAME.deeproom.json beside NAME.onnx, else the model's input)")
    p.add_argument("--resize-mode", choices=("stretch", "crop", "pad"), default=None,
                   help="how images reach that size: stretch, crop (short side, centre crop) or pad (fit, "
                   "black bars); default: the sidecar's, else stretch")
    p.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted from [0,1] pixels")
    p.add_argument("--std", metavar="S[,S,S]", help="per-channel std the pixels are divided by")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (colour) input channels")
    p.add_argument("--layout", metavar="FILE", help="a layout file (docs/layout-format.md): once the models' panels "
                   "are in the room they go where the file has them; panels it has that the room lacks are listed")
    p.set_defaults(func=cmd_open)

    p = commands.add_parser("join", help="join a room: deeproom://host:port/room?invite=TOKEN or http://host:port/room")
    p.add_argument("target", metavar="URL-or-invite")
    _view_args(p)
    p.add_argument("--password")
    p.set_defaults(func=cmd_join)

    b = bench.add_parser("render", help="a 70k-point cloud, a 10k-node graph and a 20k-tile wall in one room "
                                        "vs the same tiles as one Entity each")
    b.add_argument("--frames", type=int, default=40, help="frames measured per scene (default 40)")
    b.add_argument("--size", default="1280x720")
    b.set_defaults(func=cmd_bench_render)

    b = bench.add_parser("room", help="does the room reach everything: analyses in the engine vs in the menus, "
                                      "click-to-drawn overhead, overlaps, readable labels, t-SNE")
    b.add_argument("--quick", action="store_true", help="smaller embedding runs")
    b.set_defaults(func=cmd_bench_room)

    b = bench.add_parser("teach", help="steering and a class from inside the room: a menu freeze to the first "
                                       "step with frozen weights, a logged step to another participant's pixels, "
                                       "30 participants joining, a 50-panel layout load")
    b.add_argument("--quick", action="store_true", help="fewer repeats")
    b.set_defaults(func=cmd_bench_teach)


def _voice(args: argparse.Namespace) -> bool:
    """Voice in a window unless --no-voice; offscreen snapshots have no one to talk to."""
    from deeproom.scenes.runner import decide_headless

    return not args.no_voice and not decide_headless(args.headless)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 1280x720; got {text!r}") from None
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise SystemExit(f"--size must be between 64 and 8192 pixels per side; got {text!r}")
    return w, h


def _settings(args: argparse.Namespace) -> Any:
    from deeproom.scenes.runner import RunSettings, decide_headless

    return RunSettings(headless=decide_headless(args.headless), frames=max(1, args.frames),
                       snapshot=Path(args.snapshot) if args.snapshot else None, size=_size(args.size), xr=args.xr)


def _client(url: str | None, room: str, name: str, config: Config, **kw: Any) -> Any:
    from deeproom.net import BackgroundClient

    client = BackgroundClient(url, room=room, name=name, data_dir=config.data_dir, **kw)
    client.wait_ready(60)
    return client


def _run_room(args: argparse.Namespace, run: Any, client: Any, name: str,
              make_engine: Callable[[Any], Any] | None = None) -> int:
    """Open the room app on `client`, fed by the engine `make_engine(session)` if one is
    given; close the engine, the app and the session (voice first, then the client) after."""
    from deeproom.scenes.app import AppOptions, RoomApp
    from deeproom.scenes.runner import run_room
    from deeproom.scenes.session import RelaySession

    session = RelaySession(client, voice=_voice(args))
    engine: Any = None
    app: RoomApp | None = None
    try:
        engine = make_engine(session).start() if make_engine is not None else None
        app = RoomApp(session, options=AppOptions(offscreen=run.headless, size=run.size,
                                                  start_position=(0.0, 1.7, -1.4)), provider=engine)
        return run_room(app, run, engine=engine, name=name)
    finally:
        if engine is not None:
            engine.close()
        if app is not None:
            app.close()
        session.close()


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from deeproom.models.runtime import keep_freed_memory
    from deeproom.scenes.demo import DemoEngine

    run = _settings(args)  # refuses a bad --size before anything starts
    client = _client(args.server or config.server, "demo", args.name, config)
    print(f"demo room on relay {client.url} (room 'demo')")
    keep_freed_memory()  # live all-layer analyses cost ~2x less when freed memory is reused
    return _run_room(args, run, client, "demo", lambda s: DemoEngine(
        s, link=_engine_link(client, "demo", config), seed=args.seed, progress=lambda m: print(m, flush=True)))


def _engine_link(client: Any, room: str, config: Config) -> Any:
    """The engine's own participant in the room (panels it hosts are its own; steer reaches it)."""
    from deeproom.models.engine import ClientLink

    return ClientLink(client.url, room, "DeepRoom engine", data_dir=config.data_dir)


def cmd_open(args: argparse.Namespace, config: Config) -> int:
    import secrets

    from deeproom.models.runtime import keep_freed_memory
    from deeproom.scenes.open_models import ModelsEngine

    run = _settings(args)
    for m in args.models:
        if not Path(m).exists():
            print(f"no such model file: {m}")
            return 2
    data = Path(args.data) if args.data else None
    if data is not None and not data.exists():
        print(f"no such data: {args.data}")
        return 2
    layout = None
    if args.layout:
        from deeproom.errors import LayoutFileError
        from deeproom.net.open_layout import check_layout_file, load_when_published

        try:
            layout = check_layout_file(args.layout)
        except LayoutFileError as exc:
            print(exc)
            return 2
    room = args.room or f"open-{secrets.token_hex(3)}"
    client = _client(args.server or config.server, room, args.name, config)
    print(f"room {room!r} on relay {client.url}")
    paths = [Path(m) for m in args.models]
    keep_freed_memory()
    pre = {"size": args.resize, "mean": args.mean, "std": args.std, "channels": args.channels,
           "resize": args.resize_mode}

    def engine(s: Any) -> Any:
        host = ModelsEngine(s, paths, link=_engine_link(client, room, config), data=data, preprocess=pre,
                            progress=lambda m: print(m, flush=True))
        if layout is not None:
            load_when_published(client, layout, args.layout, host.ready, lambda m: print(m, flush=True))
        return host

    return _run_room(args, run, client, "open", engine)


def parse_target(target: str) -> tuple[str, str, str | None]:
    """(relay URL, room, invite token or None) from an invite link or http://host:port/room."""
    import urllib.parse

    from deeproom.errors import ValidationError

    if target.startswith("deeproom://"):
        from deeproom.net.auth import relay_url_from_link

        return relay_url_from_link(target)
    parts = urllib.parse.urlsplit(target)
    if parts.scheme in ("http", "https") and parts.netloc and parts.path.strip("/"):
        q = urllib.parse.parse_qs(parts.query).get("invite")
        return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/"), q[0] if q else None
    raise ValidationError("join needs deeproom://host:port/room?invite=TOKEN or http://host:port/ROOM; "
                          f"got {target[:60]!r}")


def cmd_join(args: argparse.Namespace, config: Config) -> int:
    run = _settings(args)
    url, room, invite = parse_target(args.target)
    client = _client(url, room, args.name, config, invite=invite, password=args.password)
    return _run_room(args, run, client, "join")


def cmd_bench_render(args: argparse.Namespace, config: Config) -> int:
    from deeproom.scenes.bench_render import run_bench

    return run_bench(frames=args.frames, size=_size(args.size))


def cmd_bench_room(args: argparse.Namespace, config: Config) -> int:
    from deeproom.scenes.bench_room import run_bench

    return run_bench(quick=args.quick)


def cmd_bench_teach(args: argparse.Namespace, config: Config) -> int:
    from deeproom.scenes.bench_teach import run_bench

    return run_bench(quick=args.quick)
