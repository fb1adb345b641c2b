"""deeproom.net stays free of the renderer and of XR."""

from __future__ import annotations

import subprocess
import sys


def test_relay_and_client_do_not_import_ursina_or_xr() -> None:
    code = (
        "import sys\n"
        "import deeproom.net.server, deeproom.net.client, deeproom.net.background, deeproom.net.commands\n"
        "bad = [m for m in ('ursina', 'panda3d', 'xr', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
