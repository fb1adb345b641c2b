"""`deeproom bench relay` runs end to end and ends with one JSON line (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest


def bench(*args: str, timeout: float) -> dict[str, Any]:
    """Run `deeproom bench relay ARGS`; its last line, as JSON (a failure shows the bench's stderr)."""
    proc = subprocess.run([sys.executable, "-m", "deeproom.cli", "bench", "relay", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_relay_prints_its_json_line() -> None:
    result = bench("--clients", "3", "--seconds", "1", "--procs", "1", timeout=300)
    for key in ("clients", "rate_hz", "expected", "delivered", "delivered_ratio", "p50_ms", "p99_ms",
                "server_cpu_pct", "us_per_delivery", "us_per_batch", "baseline_p99_ms", "peak_rss_mb",
                "generator_cpu_pct", "generator_lag_p99_ms", "machine_cpu_pct", "limited_by"):
        assert key in result, key
    assert result["clients"] == 3 and result["delivered"] > 0
    # the relay kept sending past the 7 batches it gives a client that never confirms: the
    # generator's participants confirm what they read (3 clients x ~30 batches/s x 1 s)
    assert result["batches_delivered"] > 3 * 7, result
    assert result["normal_clients_dropped"] == 0 and result["baseline_delivered_ratio"] > 0


@pytest.mark.slow
def test_bench_relay_hostile_changes_no_stored_state() -> None:
    """A few seconds of hostile clients beside normal ones: the figures are reported and nothing stored changed."""
    result = bench("--clients", "3", "--seconds", "3", "--procs", "1", "--hostile", "2", "--no-baseline",
                   timeout=600)
    for key in ("normal_p99_ms", "hostile_p99_ms", "hostile_p99_ratio", "hostile_state_changes", "relay_rss_growth_mb",
                "relay_peak_rss_mb", "hostile_tally", "peak_rss_mb"):
        assert key in result, key
    # the hostile clients acted in every other window of one run; the quiet windows are the baseline
    windows = result["hostile_windows"]
    assert windows["quiet"]["windows"] == windows["hostile"]["windows"] == 4, windows
    assert windows["quiet"]["samples"] > 0 and windows["hostile"]["samples"] > 0, windows
    tally = result["hostile_tally"]
    # Every class ran, and what the hostile clients sent was answered with refusals.
    for cls in ("join_storm", "flood", "reserved_names", "bad_strings", "deep_nesting", "oversized", "upload_hoarding"):
        assert any(k.startswith(cls + ".") for k in tally), (cls, tally)
    assert tally.get("join_storm.refused", 0) > 0 and tally.get("flood.refused", 0) > 0, tally
    assert not [k for k in tally if k.startswith(("join_storm.accepted", "flood.accepted", "reserved_names.accepted"))], tally
    assert result["normal_state_changes"] == 0
    assert result["hostile_state_changes"] == 0, tally


@pytest.mark.slow
def test_bench_relay_two_nodes_through_redis_reports_cross_node_figures() -> None:
    """`--nodes 2`: the room split across two relay processes and a real redis-server; keys present."""
    result = bench("--clients", "4", "--nodes", "2", "--seconds", "2", "--procs", "2", "--no-baseline",
                   timeout=600)
    for key in ("nodes", "cross_node_p99_ms", "per_node_cpu_pct", "single_node_p99_ms", "redis_cpu_pct",
                "nodes_us_per_batch", "multi_node_limited_by", "projected_300_relay_cores", "projected_300_nodes",
                "peak_rss_mb"):
        assert key in result, key
    assert result["nodes"] == 2 and len(result["per_node_cpu_pct"]) == 2
    # poses crossed between the nodes (through Redis), and none of the four clients was dropped
    assert result["cross_node_samples"] > 0 and result["cross_node_p99_ms"] is not None
    assert result["multi_node_clients_dropped"] == 0


def test_cost_model_recovers_known_costs_and_projects_a_room() -> None:
    """Runs made from a = 150 µs per client tick and b = 0.5 µs per entry give those back, and the
    projection follows from them (300 × 30 × 150 µs + 300 × 299 × 30 × 0.5 µs = 2.70 cores)."""
    from deeproom.net.bench_relay import _cost_model, _fitted_projection

    def run(n: int, delivered: float = 1.0) -> dict[str, float]:
        batches, entries = n * 30.0, n * (n - 1) * 30.0
        return {"batches_per_s": batches, "entries_per_s": entries, "delivered_ratio": delivered,
                "server_cpu_pct": (150.0 * batches + 0.5 * entries) / 1e4}

    overloaded = run(300, delivered=0.2) | {"server_cpu_pct": 99.0}  # left out of the fit
    model = _cost_model([run(10), run(50), run(100), overloaded])
    assert model == {"us_per_client_tick": 150.0, "us_per_entry": 0.5, "runs": 3}
    proj = _fitted_projection(model, 300, 30.0, 30.0)
    assert proj["projected_300_relay_cores"] == 2.7
    assert proj["projected_300_deliveries_per_s"] == 300 * 299 * 30
    # one node at 60 % of a core: 0.6e6 / (30 × (150 + 0.5 × 299)) = 66 clients of the 300
    assert proj["projected_300_clients_per_node"] == 66 and proj["projected_300_nodes"] == 5
    # one room on one node: 30·150·N + 30·0.5·N(N-1) <= 0.6e6 -> N = 100 (598,500 µs/s)
    assert proj["projected_single_node_max_clients"] == 100
    assert _cost_model([run(10)]) is None
