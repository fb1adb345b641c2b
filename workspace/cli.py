"""The `deeproom` command line.

The core defines the commands that need only the core (layouts, rooms, doctor) and
composes the others from the parts: each of `deeproom.net`, `deeproom.models` and
`deeproom.scenes` may have a light `commands` module with
`register(commands, bench)` that adds its subcommands and benchmarks, importing its
heavy libraries only when one of them runs. Only commands that work are registered,
so `--help` lists exactly what this installation can do.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from deeproom.config import Config
from deeproom.errors import DeepRoomError
from deeproom.terminal import PrintableStream

PARTS = (
    "deeproom.net.commands",
    "deeproom.net.voice_commands",
    "deeproom.net.recording.commands",
    "deeproom.models.commands",
    "deeproom.models.training_commands",
    "deeproom.scenes.commands",
    "deeproom.scenes.xr_commands",
)

Handler = Callable[[argparse.Namespace, Config], int]


def _load_parts() -> list[Any]:
    parts = []
    for name in PARTS:
        try:
            parts.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the part exists but something it needs is missing
                raise
    return parts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeproom",
        description="DeepRoom: look inside neural networks together, in a shared room.",
    )
    parser.add_argument(
        "--data-dir",
        help="where rooms, layouts and blobs are kept (default: the user data directory; env DEEPROOM_DATA_DIR)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = commands.add_parser(
        "bench", help="run a benchmark; the last line of output is one JSON object"
    )
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    parts = _load_parts()
    for part in parts:
        part.register(commands, bench)
    if not bench.choices:
        commands.choices.pop("bench", None)
        commands._choices_actions = [a for a in commands._choices_actions if a.dest != "bench"]
    _register_core(commands)
    parser.set_defaults(doctor_checks=[c for part in parts for c in getattr(part, "doctor_checks", list)()])
    return parser


def _register_core(commands: Any) -> None:
    if "demo" not in commands.choices:
        p = commands.add_parser(
            "demo",
            help="create a demo room with one panel of each kind, save its layout and print it "
            "(no rendering in this installation)",
        )
        p.set_defaults(func=cmd_demo_text)

    room = commands.add_parser("room", help="rooms kept in the local store")
    rsub = room.add_subparsers(dest="room_command", metavar="ACTION", required=True)
    p = rsub.add_parser("list", help="list stored rooms")
    p.set_defaults(func=cmd_room_list)
    p = rsub.add_parser("show", help="print a stored room")
    p.add_argument("room")
    p.set_defaults(func=cmd_room_show)
    p = rsub.add_parser("compact", help="merge a room's update log into one entry")
    p.add_argument("room")
    p.set_defaults(func=cmd_room_compact)
    p = rsub.add_parser("delete", help="delete a stored room and its update log")
    p.add_argument("room")
    p.set_defaults(func=cmd_room_delete)

    layout = commands.add_parser("layout", help="save, list, load, export, import and delete layouts")
    lsub = layout.add_subparsers(dest="layout_command", metavar="ACTION", required=True)
    p = lsub.add_parser("list", help="list saved layouts (every version)")
    p.add_argument("--room", help="only this room's")
    p.set_defaults(func=cmd_layout_list)
    p = lsub.add_parser("save", help="save a room's current layout as the next version of NAME")
    p.add_argument("room")
    p.add_argument("name")
    p.set_defaults(func=cmd_layout_save)
    p = lsub.add_parser("load", help="make a room's panels match a saved layout")
    p.add_argument("room")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="which version (default: the latest)")
    p.set_defaults(func=cmd_layout_load)
    p = lsub.add_parser("export", help="write a layout to a JSON file (docs/layout-format.md)")
    p.add_argument("room")
    p.add_argument("file")
    p.add_argument("--name", help="a saved layout (default: the room's current layout)")
    p.add_argument("--version", type=int, help="which version of --name (default: the latest)")
    p.set_defaults(func=cmd_layout_export)
    p = lsub.add_parser("import", help="check a layout file and save it as the next version of NAME")
    p.add_argument("file")
    p.add_argument("room")
    p.add_argument("name")
    p.add_argument("--apply", action="store_true", help="also make the room's panels match it")
    p.set_defaults(func=cmd_layout_import)
    p = lsub.add_parser("delete", help="delete a saved layout (every version, or one)")
    p.add_argument("room")
    p.add_argument("name")
    p.add_argument("--version", type=int)
    p.set_defaults(func=cmd_layout_delete)

    p = commands.add_parser("doctor", help="report what this machine offers DeepRoom")
    p.set_defaults(func=cmd_doctor)


def main(argv: Sequence[str] | None = None) -> int:
    # every command's output is text: names from model files, recordings and rooms cannot
    # drive the terminal (deeproom.terminal)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PrintableStream(out), PrintableStream(err)  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        config = Config.from_env(data_dir=args.data_dir)  # a malformed DEEPROOM_* variable is a clear error
        return int(args.func(args, config) or 0)
    except DeepRoomError as exc:
        print(f"deeproom: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deeproom: interrupted", file=sys.stderr)
        return 130


# --- core commands ----------------------------------------------------------------------


def _store(config: Config) -> Any:
    from deeproom.storage import Store

    return Store(config.db_path)


def cmd_room_list(args: argparse.Namespace, config: Config) -> int:
    with _store(config) as store:
        rooms = store.rooms()
        if not rooms:
            print(f"no rooms in {config.db_path}")
        for r in rooms:
            doc = store.load_room(r.id)
            room = doc.snapshot()
            print(f"{r.id:<20} {room.settings.name!r:<28} {len(room.panels):>4} panels  {r.updates:>5} log entries")
    return 0


def cmd_room_show(args: argparse.Namespace, config: Config) -> int:
    with _store(config) as store:
        print(store.load_room(args.room).snapshot().describe())
    return 0


def cmd_room_compact(args: argparse.Namespace, config: Config) -> int:
    with _store(config) as store:
        n = store.compact(args.room)
    print(f"room {args.room!r}: {n} log entries merged into 1")
    return 0


def cmd_room_delete(args: argparse.Namespace, config: Config) -> int:
    with _store(config) as store:
        store.delete_room(args.room)
    print(f"room {args.room!r} deleted")
    return 0


def cmd_layout_list(args: argparse.Namespace, config: Config) -> int:
    import time

    with _store(config) as store:
        items = store.list_layouts(args.room)
    if not items:
        print("no saved layouts" + (f" for room {args.room!r}" if args.room else ""))
    for i in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.created))
        print(f"{i.room_id:<20} {i.name:<24} v{i.version:<4} {i.panels:>4} panels  {when}")
    return 0


def cmd_layout_save(args: argparse.Namespace, config: Config) -> int:
    from deeproom.layout import layout_of

    with _store(config) as store:
        layout = layout_of(store.load_room(args.room).snapshot())
        info = store.save_layout(args.room, args.name, layout)
    print(f"saved layout {info.name!r} v{info.version} of room {info.room_id!r} ({info.panels} panels)")
    return 0


def cmd_layout_load(args: argparse.Namespace, config: Config) -> int:
    from deeproom.layout import apply_layout
    from deeproom.ops import SYSTEM

    with _store(config) as store:
        layout = store.load_layout(args.room, args.name, args.version)
        doc = store.load_room(args.room)
        sub = store.track(doc)
        try:
            n = apply_layout(doc, layout, SYSTEM)
        finally:
            sub.unsubscribe()
    print(f"room {args.room!r} now matches layout {args.name!r} ({n} changes)")
    return 0


def cmd_layout_export(args: argparse.Namespace, config: Config) -> int:
    from deeproom.layout import layout_of, write_layout_file

    with _store(config) as store:
        if args.name:
            layout = store.load_layout(args.room, args.name, args.version)
        else:
            layout = layout_of(store.load_room(args.room).snapshot())
    write_layout_file(layout, args.file)
    print(f"wrote {args.file} ({len(layout.panels)} panels)")
    return 0


def cmd_layout_import(args: argparse.Namespace, config: Config) -> int:
    from deeproom.layout import apply_layout, read_layout_file
    from deeproom.ops import SYSTEM

    layout = read_layout_file(args.file)  # refused here, before anything is stored
    with _store(config) as store:
        if args.apply:
            doc = store.load_room(args.room)
            apply_layout(doc.__class__(doc.room_id, update=doc.update_since(None)), layout, SYSTEM)  # dry run
        info = store.save_layout(args.room, args.name, layout)
        msg = f"imported {args.file} as layout {info.name!r} v{info.version} of room {info.room_id!r}"
        if args.apply:
            sub = store.track(doc)
            try:
                apply_layout(doc, layout, SYSTEM)
            finally:
                sub.unsubscribe()
            msg += " and applied it"
    print(msg)
    return 0


def cmd_layout_delete(args: argparse.Namespace, config: Config) -> int:
    with _store(config) as store:
        n = store.delete_layout(args.room, args.name, args.version)
    print(f"deleted {n} version{'s' if n != 1 else ''} of layout {args.name!r}")
    return 0


def cmd_demo_text(args: argparse.Namespace, config: Config) -> int:
    from deeproom.demo_room import build_demo_room
    from deeproom.layout import layout_of

    with _store(config) as store:
        doc = build_demo_room()
        if store.has_room(doc.room_id):
            store.delete_room(doc.room_id)
        store.save_room(doc)
        info = store.save_layout(doc.room_id, "default", layout_of(doc.snapshot()))
        print(doc.snapshot().describe())
        print(f"\nstored room {doc.room_id!r} and layout 'default' v{info.version} in {config.db_path}")
        print("this installation has no renderer registered; see `deeproom doctor`")
    return 0


# --- doctor -----------------------------------------------------------------------------

_PACKAGES = (
    "pycrdt", "platformdirs", "numpy", "pillow", "python-socketio", "aiohttp", "aiortc", "redis",
    "sounddevice", "torch", "onnx", "onnxruntime", "scikit-learn", "openTSNE", "umap-learn", "captum",
    "ursina", "panda3d", "pyopenxr",
)


def _check_torch() -> str:
    import torch

    if torch.cuda.is_available():
        return f"torch {torch.__version__}: CUDA GPU {torch.cuda.get_device_name(0)}"
    return f"torch {torch.__version__}: CPU only ({torch.get_num_threads()} threads)"


def _check_display() -> str:
    import ctypes.util

    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return f"display available (DISPLAY={os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')})"
    egl = ctypes.util.find_library("EGL")
    if egl:
        return f"no display; offscreen rendering through EGL ({egl})"
    return "no display and no libEGL: cannot render (install libegl1 libegl-mesa0 libgl1-mesa-dri)"


def _check_openxr() -> str:
    import xr

    try:
        instance = xr.create_instance(
            xr.InstanceCreateInfo(application_info=xr.ApplicationInfo(application_name="deeproom-doctor"))
        )
    except xr.exception.RuntimeUnavailableError:
        return "no OpenXR runtime found (the loader found none); XR mode falls back to desktop"
    except Exception as exc:
        return f"OpenXR runtime present but refused: {type(exc).__name__}: {exc}"
    try:
        props = xr.get_instance_properties(instance)
        name = props.runtime_name.decode() if isinstance(props.runtime_name, bytes) else props.runtime_name
        return f"OpenXR runtime: {name}"
    finally:
        xr.destroy_instance(instance)


def _check_audio() -> str:
    import sounddevice as sd

    try:
        devices = sd.query_devices()
    except Exception as exc:
        return f"no audio: {exc}"
    ins = sum(1 for d in devices if d["max_input_channels"] > 0)
    outs = sum(1 for d in devices if d["max_output_channels"] > 0)
    if not ins and not outs:
        return "no audio devices: voice is off (the room works without it)"
    return f"audio: {ins} input and {outs} output devices"


def cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    print(f"DeepRoom {_version('deeproom')} on Python {platform.python_version()} ({platform.platform()})")
    print(f"data directory: {config.data_dir}")
    print("packages:")
    for name in _PACKAGES:
        print(f"  {name:<16} {_version(name)}")
    checks: list[tuple[str, Callable[[], str]]] = [
        ("torch", _check_torch),
        ("rendering", _check_display),
        ("openxr", _check_openxr),
        ("audio", _check_audio),
        *args.doctor_checks,
    ]
    for label, check in checks:
        try:
            result = check()
        except Exception as exc:
            result = f"unavailable: {type(exc).__name__}: {exc}"
        print(f"{label + ':':<11} {result}")
    return 0


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "main"]
