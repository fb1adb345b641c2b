"""Processes DeepRoom starts (a relay for a benchmark, a runtime for a headset) and stops by PID."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], *, kill: bool = False, wait_s: float = 10.0) -> None:
    """Stop `proc` if it still runs: SIGTERM (SIGKILL with `kill`), then SIGKILL if it has not
    exited within `wait_s`; returns once it has been reaped."""
    if proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(wait_s)
