"""Shared helpers for `deeproom bench ...`: every benchmark ends with one JSON line.

Every result carries `peak_rss_mb` (this process and its waited-for children), so
memory is reported alongside speed.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of children it has waited for, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024.0, 1)  # ru_maxrss is KiB on Linux


def emit(result: dict[str, Any]) -> dict[str, Any]:
    """Print `result` (plus peak_rss_mb unless given) as the last line of output, and return it."""
    out = dict(result)
    out.setdefault("peak_rss_mb", peak_rss_mb())
    sys.stdout.flush()
    print(json.dumps(out, sort_keys=False, allow_nan=False, default=float), flush=True)
    return out
