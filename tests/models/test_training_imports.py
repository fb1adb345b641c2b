"""`deeproom.watch` is the training package's `watch`; importing it pulls in neither ursina nor the heavy extras."""

from __future__ import annotations

import subprocess
import sys


def test_watch_import_is_light_and_never_touches_ursina() -> None:
    code = (
        "import sys, deeproom\n"
        "w = deeproom.watch\n"
        "from deeproom.models.training import watch\n"
        "assert w is watch\n"
        "bad = [m for m in ('ursina', 'panda3d', 'openTSNE', 'sklearn', 'socketio', 'aiortc') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_the_cli_lists_the_training_commands() -> None:
    from deeproom.cli import build_parser

    parser = build_parser()
    help_text = parser.format_help()
    assert "train-demo" in help_text
    args = parser.parse_args(["bench", "training", "--quick"])
    assert args.quick and callable(args.func)
