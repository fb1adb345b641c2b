"""`deeproom bench replay`: one relay run with recording switched off and on in windows, speakers
uploading voice segments while it records; ends with one JSON line (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deeproom.net.recording.bench_load import WindowPlan, summarize, voice_segment_s


def _window(
    recording: bool, cpu: float, other: float = 10.0, load: float = 1.0
) -> dict[str, object]:
    return {
        "recording": recording,
        "relay_cpu_pct": cpu,
        "other_cpu_pct": other,
        "load_avg_1min": load,
    }


def test_summarize_compares_on_windows_with_off_windows() -> None:
    windows = [
        _window(False, 10.0),
        _window(True, 12.0, 30.0),
        _window(False, 14.0, 50.0, 2.0),
        _window(True, 18.0),
        _window(False, 10.0),
    ]
    s = summarize(windows)
    assert s["relay_cpu_pct_plain"] == pytest.approx(34.0 / 3, abs=0.01)
    assert s["relay_cpu_pct_record"] == 15.0
    assert s["record_cpu_ratio"] == pytest.approx(15.0 / (34.0 / 3), abs=0.001)
    assert s["record_cpu_ratio_neighbours"] == [1.0, 1.5]  # 12 / mean(10, 14), 18 / mean(14, 10)
    assert s["windows_on"] == 2 and s["windows_off"] == 3
    assert s["other_cpu_pct_range"] == [10.0, 50.0] and s["load_avg_1min_range"] == [1.0, 2.0]


def test_window_plan_refuses_what_cannot_alternate() -> None:
    assert [WindowPlan().recording(i) for i in range(5)] == [False, True, False, True, False]
    assert voice_segment_s(5.0, 10.0) == 2.0 and voice_segment_s(60.0, 10.0) == 10.0
    WindowPlan(3, 3.0, 0.6, 1.2).check(5, 3)
    for plan, clients, what in (
        (WindowPlan(4), 30, "odd"),
        (WindowPlan(1), 30, "odd"),
        (WindowPlan(3, 3.0, 3.0, 1.2), 30, "--settle"),
        (WindowPlan(), 4, "--clients"),
        (WindowPlan(3, 1.0, 0.2, 0.4), 30, "voice segment"),
    ):
        with pytest.raises(ValueError, match=what):
            plan.check(clients, 3)


def test_bench_replay_refuses_an_even_window_count_before_starting_anything() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deeproom.cli", "bench", "replay", "--windows", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "--windows must be odd" in out.stderr


@pytest.mark.slow
def test_bench_replay_measures_on_and_off_windows_of_one_run() -> None:
    out = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "deeproom.cli",
                "bench",
                "replay",
                "--clients",
                "6",
                "--rate",
                "10",
                "--seconds",
                "3",
                "--windows",
                "3",
                "--settle",
                "0.6",
                "--minutes",
                "0.2",
                "--seeks",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    result = json.loads(out[-1])
    for key in (
        "record_cpu_ratio",
        "record_cpu_ratio_neighbours",
        "relay_cpu_pct_record",
        "relay_cpu_pct_plain",
        "other_cpu_pct_record",
        "other_cpu_pct_plain",
        "load_avg_1min_range",
        "window_figures",
        "bytes_per_participant_minute",
        "presence_bytes_per_participant_minute",
        "voice_bytes_per_participant_minute",
        "seek_ms",
        "replay_position_err_ticks",
        "replay_tone_err_pct",
        "peak_rss_mb",
    ):
        assert key in result, key
    windows = result["window_figures"]
    assert [w["recording"] for w in windows] == [False, True, False]
    assert result["windows_on"] == 1 and result["windows_off"] == 2
    for w in windows:  # every window measured the relay (its CPU over the part after the settle)
        assert w["measured_s"] > 1.5 and w["relay_cpu_pct"] > 0, w
    # the one on-window recorded, once, with the speakers' voice in it; the off-windows did not record
    assert result["recordings"] == 1 and result["recorded_s"] > 2.5
    assert (
        result["speakers"] == 3
        and result["voice_errors"] == []
        and result["voice_segments_sent"] >= 6
    )
    assert windows[0]["voice_segments"] == 0 and windows[1]["voice_segments"] >= 3
    assert (
        result["voice_bytes_per_participant_minute"] > 0
        and result["presence_bytes_per_participant_minute"] > 0
    )
    assert result["bytes_per_participant_minute"] == (
        result["presence_bytes_per_participant_minute"]
        + result["voice_bytes_per_participant_minute"]
    )
    assert result["clients_dropped"] == 0
