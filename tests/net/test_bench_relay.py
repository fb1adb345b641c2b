"""`deeproom bench relay` runs end to end and ends with one JSON line (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_relay_prints_its_json_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deeproom.cli", "bench", "relay", "--clients", "3", "--seconds", "1", "--procs", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.strip().splitlines()
    result = json.loads(out[-1])
    for key in ("clients", "rate_hz", "expected", "delivered", "delivered_ratio", "p50_ms", "p99_ms",
                "server_cpu_pct", "us_per_delivery", "baseline_p99_ms", "peak_rss_mb"):
        assert key in result, key
    assert result["clients"] == 3 and result["delivered"] > 0
