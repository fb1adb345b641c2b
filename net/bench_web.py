"""`deeproom bench web`: the browser client in Debian's headless Chromium against a real relay.

One run: a relay on 127.0.0.1 (its own process), a Python host who fills a room with
every panel kind, a Python observer (the baseline), and Chromium (driven by selenium
with Debian's chromedriver) on the page the relay serves. Measured:

- `browser_join_s`: from asking the browser for the page to every panel drawn;
- `move_to_browser_p99_ms`: a panel move applied by the Python host to the frame in
  which the browser draws it (both clocks are this machine's wall clock), beside
  `move_to_python_p99_ms`, the same moves reaching the Python observer, and
  `move_to_browser_doc_p99_ms`, the moves applied to the page's Y.Doc (before a frame);
- `browser_fps`: frames per second the page draws when it draws every frame (software GL
  here: SwiftShader; otherwise the page draws only when something changed, and
  `idle_frames_per_s` shows a still room costs no frames);
- `browser_tone_hz`: the loudest frequency a WebAudio analyser in the page hears from
  an aiortc peer sending 440 Hz bursts;
- `browser_voice_ms`: mouth to ear, browser ← aiortc: from each burst's first sample
  being "spoken" (paced like a microphone) to the page's analyser seeing it loud
  (polled every 4 ms; the sound card's own buffer is not included);
- `peak_rss_mb` (this process: the Python clients, and the relay with `--relay embedded`) and
  `browser_rss_mb` (Chromium);
- diagnostics, to see where a move's time goes: the medians (`move_to_browser_doc_p50_ms`,
  `move_to_python_p50_ms`), the page's render calls during the moves (`page_frames_during_moves`,
  `page_render_p50_ms`, `page_render_p99_ms`: main-thread ms of each), its long tasks (over
  50 ms: `page_long_tasks`, `page_long_task_max_ms`) and the machine's load average.

The page adapts its render resolution to what its frames cost (`net/web/src/quality.js`);
`--quality full` pins full resolution and `--quality both` measures fps and moves in both, the
moves in alternating blocks (auto, full, auto, full) so both see the same load, full's keys
ending in `_full`. `render_scale_during_moves` is the auto scale averaged over each auto
block, `render_scale_end` where it settled.

The relay runs as its own process (`deeproom serve`), as deployed; `--relay embedded` puts it
in this process's event loop with the clients (the earlier runs).

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from deeproom.config import Config
from deeproom.content import encode_content

SIZE = (1.3, 0.95)
IMAGE_RGB = (220, 40, 40)


def every_kind_blobs(seed: int = 0) -> dict[str, bytes]:
    """One content blob per panel kind, as the engine writes them (docs/protocol.md §10)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(50, dtype=np.int64)
    img = np.zeros((16, 16, 3), np.uint8)
    img[:] = IMAGE_RGB
    nodes = [{"id": f"n{i}", "name": f"layer{i}", "op": ["conv", "relu", "linear"][i % 3], "rank": i} for i in range(8)]
    cloud = rng.normal(size=(600, 3)).astype(np.float32)
    return {
        "metrics": encode_content({"kind": "metrics", "series": ["loss", "acc"], "x": "step"},
                                  {"step": steps, "loss": np.exp(-steps / 20).astype(np.float32),
                                   "acc": (1 - np.exp(-steps / 15)).astype(np.float32)}),
        "confusion_matrix": encode_content({"kind": "confusion_matrix", "labels": ["a", "b", "c"]},
                                           {"matrix": np.array([[9, 1, 0], [2, 7, 1], [0, 0, 10]], np.int32)}),
        "feature_maps": encode_content({"kind": "feature_maps", "layer": "conv1"},
                                       {"maps": rng.normal(size=(8, 12, 12)).astype(np.float16)}),
        "filters": encode_content({"kind": "filters", "layer": "conv1"},
                                  {"filters": rng.normal(size=(16, 5, 5)).astype(np.float32)}),
        "grad_cam": encode_content({"kind": "grad_cam", "layer": "conv2", "target": 3, "method": "Grad-CAM"},
                                   {"image": (rng.random((28, 28)) * 255).astype(np.uint8),
                                    "cam": rng.random((7, 7)).astype(np.float32)}),
        "attention": encode_content({"kind": "attention", "layer": "attn0"},
                                    {"attention": rng.random((4, 10, 10)).astype(np.float16)}),
        "image": encode_content({"kind": "image"}, {"image": img}),
        "note": encode_content({"kind": "note", "text": "Hello from Python"}, {}),
        "model_graph": encode_content({"kind": "model_graph", "nodes": nodes,
                                       "edges": [[f"n{i}", f"n{i + 1}"] for i in range(7)]}, {}),
        "latent_cloud": encode_content({"kind": "latent_cloud", "classes": [str(i) for i in range(10)]},
                                       {"positions": cloud, "labels": (np.arange(600) % 10).astype(np.int16)}),
    }


def slot(i: int) -> list[float]:
    """Two rows of five panels, 3 m in front of a viewer at the origin."""
    row, col = divmod(i, 5)
    return [-2.9 + 1.45 * col, 2.2 - 1.2 * row, 3.0]


async def fill_room(client: Any, blobs: dict[str, bytes] | None = None) -> dict[str, str]:
    """Add one panel per kind (panel id = kind) showing its blob; returns panel id → sha."""
    blobs = blobs if blobs is not None else every_kind_blobs()
    shas = {}
    for i, (kind, blob) in enumerate(blobs.items()):
        sha = await client.put_blob(blob)
        shas[kind] = sha
        await client.apply({"op": "add_panel", "panel_id": kind, "kind": kind, "title": kind.replace("_", " "),
                            "transform": {"position": slot(i)}, "size": list(SIZE),
                            "content": {"source": {}, "refs": [sha]}})
    return shas


def browser_missing() -> str | None:
    """Why the browser benchmark or tests cannot run here (None: they can)."""
    from deeproom.net.web_serve import BUNDLE

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver fonts-liberation)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium, or the project's test extra)"
    if not BUNDLE.exists():
        return f"the page's bundle {BUNDLE} is not built (make web: npm ci and esbuild)"
    return None


CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader",
                 "--autoplay-policy=no-user-gesture-required", "--disable-features=WebRtcHideLocalIpsWithMdns",
                 "--allow-loopback-in-peer-connection")
"""Headless Chromium as the tests run it: root needs --no-sandbox; software WebGL 2 through
SwiftShader; audio without a click; WebRTC host candidates on 127.0.0.1, not mDNS names."""


def chrome(width: int, height: int, extra: tuple[str, ...] = ()) -> Any:
    """Debian's chromium through Debian's chromedriver (no Selenium Manager, no downloads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(shutil.which("chromium"))
    for a in (*CHROMIUM_ARGS, f"--window-size={width},{height}", *extra):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=opts)
    # --headless=new takes a simulated toolbar off the window size; this makes the page W x H
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    d.set_script_timeout(30)
    d.set_page_load_timeout(60)  # a page that never loads fails the run instead of hanging it
    return d


def _p99(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values), 99)) if values else float("nan")


def _arrivals(sent: dict[float, float], seen: list[tuple[float, float]]) -> list[float]:
    """ms from each sent x to the first time an x at least as far along was seen."""
    seen = sorted(seen, key=lambda e: e[1])
    out = []
    for x, t in sent.items():
        first = next((at for sx, at in seen if sx >= x - 1e-6), None)
        if first is not None:
            out.append((first - t) * 1000)
    return out


def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return float("nan")
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


class RelayProcess:
    """`deeproom serve` as its own process on a free port of 127.0.0.1, as in production (the
    relay then does not share this process's event loop and GIL with the clients measuring it);
    stopped by its PID."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def __aenter__(self) -> RelayProcess:
        import subprocess
        import sys

        from deeproom.net.bench_relay import _free_port, _wait_port

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.log = open(self.data_dir / "relay.log", "wb")  # noqa: SIM115 - closed in __aexit__
        self.proc = subprocess.Popen([sys.executable, "-m", "deeproom.cli", "--data-dir", str(self.data_dir), "serve",
                                      "--port", str(self.port), "--host", "127.0.0.1"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        await asyncio.to_thread(_wait_port, self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        from deeproom.net.bench_relay import _stop_process

        await asyncio.to_thread(_stop_process, self.proc, self.log)


_LONG_TASKS = ("window.__longTasks = []; if (!window.__longTaskObserver) { window.__longTaskObserver = "
               "new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__longTasks.push(e.duration); }); "
               "window.__longTaskObserver.observe({type: 'longtask'}); }")
"""One observer for the page's long tasks (over 50 ms); each run of this empties the list."""


def _loadavg() -> float:
    import os

    return round(os.getloadavg()[0], 2)


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from deeproom.net import EmbeddedRelay, RoomClient
    from deeproom.net.voice import ToneTrack, VoiceConfig
    from deeproom.net.voice.room import RoomVoice

    out: dict[str, Any] = {"moves": args.moves, "width": args.width, "height": args.height, "relay": args.relay,
                           "quality": args.quality, "loadavg_1m_at_start": _loadavg()}
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-web-") as tmp:
        relay_cm: Any = RelayProcess(Path(tmp) / "relay") if args.relay == "process" else \
            EmbeddedRelay(data_dir=Path(tmp) / "relay")
        async with relay_cm as relay, \
                RoomClient(relay.url, room="bench-web", name="Host", participant_id="aa-host",
                           participant_key="bench-host-key-0123") as host:
            await fill_room(host)
            tone = ToneTrack(440.0, amplitude=0.5, onset_s=1.0, burst_s=0.25, period_s=1.0)
            d = await asyncio.to_thread(chrome, args.width, args.height)
            try:
                # join: page request to every panel drawn
                t0 = time.time()
                start_mode = "auto" if args.quality == "both" else args.quality
                await asyncio.to_thread(d.get, f"{relay.url}/r/bench-web?id=zz-browser&name=Browser&voice=1"
                                        f"&quality={start_mode}")
                state = await _until(d, "s.allDrawnAt !== null", 60)
                out["browser_join_s"] = round((state["timeOrigin"] + state["allDrawnAt"]) / 1000 - t0, 3)
                out["panels_drawn"] = sum(p["status"] == "drawn" for p in state["panels"].values())
                out["panels_failed"] = sum(p["status"] == "error" for p in state["panels"].values())

                modes = ["auto", "full"] if args.quality == "both" else [args.quality]
                # fps drawing every frame (the page draws only on changes otherwise, as in XR it draws all)
                for mode in modes:
                    await _set_quality(d, mode)
                    fps = await _fps(d, args.fps_seconds)
                    out["browser_fps" + _suffix(mode, modes)] = fps
                    if mode == "auto":
                        out["fps_render_scale"] = (await _state(d))["quality"]["scale"]
                await asyncio.to_thread(d.execute_script, "window.deeproom.continuous(false)")
                await asyncio.sleep(0.3)
                idle0 = (await _state(d))["frames"]
                await asyncio.sleep(2.0)
                out["idle_frames_per_s"] = ((await _state(d))["frames"] - idle0) / 2  # a still room draws nothing

                # moves: host → browser (drawn), host → Python observer (baseline); with both qualities
                # in alternating blocks (auto, full, auto, full), so both see the same load
                blocks = [m for _ in range(2) for m in modes] if len(modes) > 1 else modes
                per_block = args.moves // 2 if len(modes) > 1 else args.moves
                x_next = -2.9
                async with RoomClient(relay.url, room="bench-web", name="Observer") as observer:
                    seen: dict[float, float] = {}

                    def on_change(_change: Any) -> None:
                        p = observer.room.panels.get("image")
                        if p is not None:
                            seen.setdefault(round(p.transform.position[0], 4), time.time())

                    sub = observer.observe(on_change)
                    got: dict[str, dict[str, list[Any]]] = {m: {"sent": [], "log": [], "applied": [], "render": [],
                                                                "long": [], "scales": []} for m in modes}
                    for mode in blocks:
                        await _set_quality(d, mode)
                        await asyncio.to_thread(d.execute_script, "window.deeproom.moves(); window.deeproom.applied(); "
                                                "window.deeproom.renderMs(); " + _LONG_TASKS)
                        t_start = await asyncio.to_thread(d.execute_script, "return performance.now()")
                        sent: dict[float, float] = {}
                        for _ in range(per_block):
                            x_next = round(x_next + 0.0005, 4)
                            sent[x_next] = time.time()
                            await host.apply({"op": "move_panel", "panel_id": "image",
                                              "transform": {"position": [x_next, 2.2, 3.0]}})
                            await asyncio.sleep(1 / args.move_hz)
                        await asyncio.sleep(0.5)
                        g = got[mode]
                        g["sent"].append(sent)
                        g["log"] += await asyncio.to_thread(d.execute_script, "return window.deeproom.moves()")
                        g["applied"] += await asyncio.to_thread(d.execute_script, "return window.deeproom.applied()")
                        g["render"] += await asyncio.to_thread(d.execute_script, "return window.deeproom.renderMs()")
                        g["long"] += await asyncio.to_thread(d.execute_script, "return window.__longTasks") or []
                        q = (await _state(d))["quality"]
                        t_end = await asyncio.to_thread(d.execute_script, "return performance.now()")
                        g["scales"].append(_scale_over(q["changes"], t_start, t_end))
                    sub.unsubscribe()
                for mode in modes:
                    g = got[mode]
                    browser_ms, doc_ms, python_ms = [], [], []
                    for sent in g["sent"]:
                        # Moves go up in x: a move counts as drawn (applied) in the first frame (update)
                        # showing it or a later one -- several moves arriving during one frame are
                        # drawn together, and only the last of them is in the page's log.
                        browser_ms += _arrivals(sent, [(x, at / 1000) for pid, x, at in g["log"] if pid == "image"])
                        doc_ms += _arrivals(sent, [(x, at / 1000) for pid, x, at in g["applied"] if pid == "image"])
                        python_ms += [(seen[x] - t) * 1000 for x, t in sent.items() if x in seen]
                    sfx = _suffix(mode, modes)
                    out["moves_seen_by_browser" + sfx] = len(g["log"])
                    out["move_to_browser_p50_ms" + sfx] = round(statistics.median(browser_ms), 1) if browser_ms else None
                    out["move_to_browser_p99_ms" + sfx] = round(_p99(browser_ms), 1)
                    out["move_to_browser_doc_p99_ms" + sfx] = round(_p99(doc_ms), 1)  # in the page's Y.Doc
                    out["move_to_python_p99_ms" + sfx] = round(_p99(python_ms), 1)
                    # where the time goes (diagnostics): the same moves' medians, the page's render calls
                    # (main-thread ms per frame) and its long tasks (over 50 ms) during the moves
                    out["move_to_browser_doc_p50_ms" + sfx] = round(statistics.median(doc_ms), 1) if doc_ms else None
                    out["move_to_python_p50_ms" + sfx] = round(statistics.median(python_ms), 1) if python_ms else None
                    render_ms, long_tasks = g["render"], g["long"]
                    out["page_frames_during_moves" + sfx] = len(render_ms)
                    out["page_render_p50_ms" + sfx] = round(statistics.median(render_ms), 1) if render_ms else None
                    out["page_render_p99_ms" + sfx] = round(_p99(render_ms), 1) if render_ms else None
                    out["page_long_tasks" + sfx] = len(long_tasks)
                    out["page_long_task_max_ms" + sfx] = round(max(long_tasks), 1) if long_tasks else 0.0
                    if mode == "auto":  # the scale the page drew the moves at: time-weighted per block, and at the end
                        out["render_scale_during_moves"] = [round(v, 2) for v in g["scales"]]
                q = (await _state(d))["quality"]
                out["render_scale_changes"] = len(q["changes"])
                if "auto" in modes:
                    await _set_quality(d, "auto")
                    out["render_scale_end"] = (await _state(d))["quality"]["scale"]

                # voice: an aiortc peer sends 440 Hz bursts; the page listens
                async with RoomClient(relay.url, room="bench-web", name="Tone", participant_id="aa-tone",
                                      participant_key="bench-tone-key-0123") as tc, \
                        RoomVoice(tc, tone, VoiceConfig()):
                    await _until(d, "s.voice && s.voice.links.some(([p, st]) => p === 'aa-tone' && st === 'connected')", 30)
                    await asyncio.to_thread(d.execute_script, "window.deeproom.watchOnsets('aa-tone', 0.05)")
                    peaks: list[float] = []
                    end = time.monotonic() + args.voice_seconds
                    while time.monotonic() < end:
                        p = await asyncio.to_thread(d.execute_script, "return window.deeproom.peak('aa-tone')")
                        if p and p["db"] is not None and p["db"] > -50:  # -Infinity (silence) arrives as None
                            peaks.append(float(p["hz"]))
                        await asyncio.sleep(0.1)
                    heard = await asyncio.to_thread(d.execute_script, "return window.deeproom.onsets('aa-tone')")
                    offset = time.time() - time.perf_counter()  # the tone's clock → the wall clock
                    spoken = [tone.sample_time(i) + offset for i in tone.onset_samples(tone.samples_sent)]
                out["browser_tone_hz"] = round(statistics.median(peaks), 1) if peaks else None
                lat = []
                for h in heard:
                    before = [s for s in spoken if s <= h / 1000]
                    if before and h / 1000 - before[-1] < 0.5:
                        lat.append((h / 1000 - before[-1]) * 1000)
                out["bursts_heard"] = len(lat)
                out["browser_voice_ms"] = round(statistics.median(lat), 1) if lat else None
                out["browser_rss_mb"] = round(_tree_rss_mb(d.service.process.pid), 1)
            finally:
                await asyncio.to_thread(d.quit)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["loadavg_1m_at_end"] = _loadavg()
    return out


def _suffix(mode: str, modes: list[str]) -> str:
    """Keys of the first quality measured are bare; the other's end in `_full` / `_auto`."""
    return "" if mode == modes[0] else f"_{mode}"


async def _set_quality(d: Any, mode: str) -> None:
    await asyncio.to_thread(d.execute_script, "window.deeproom.quality.setMode(arguments[0])", mode)
    await asyncio.sleep(0.2)


async def _fps(d: Any, seconds: float) -> float:
    """Frames per second drawing every frame, after a second to settle (auto: to adapt)."""
    await asyncio.to_thread(d.execute_script, "window.deeproom.continuous(true)")
    await asyncio.sleep(1.0)
    f0, c0 = (await _state(d))["frames"], time.monotonic()
    await asyncio.sleep(seconds)
    return round(((await _state(d))["frames"] - f0) / (time.monotonic() - c0), 1)


def _scale_over(changes: list[list[Any]], t0: float, t1: float) -> float:
    """The auto render scale averaged over the page-clock window [t0, t1] (ms), from the page's
    changes ([ms, scale, why]; before the first, 1)."""
    scale = next((float(c[1]) for c in reversed(changes) if c[0] <= t0), 1.0)
    total, at = 0.0, t0
    for ms, s, _why in (c for c in changes if t0 < c[0] <= t1):
        total += scale * (ms - at)
        scale, at = float(s), ms
    total += scale * (t1 - at)
    return total / (t1 - t0) if t1 > t0 else scale


async def _state(d: Any) -> dict[str, Any]:
    return await asyncio.to_thread(d.execute_script, "return window.deeproom.state()")


async def _until(d: Any, condition: str, timeout: float) -> dict[str, Any]:
    """The page's state once `condition` (JS over `s`) holds."""
    script = f"const s = window.deeproom && window.deeproom.state ? window.deeproom.state() : null; return s && ({condition}) ? s : null"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = await asyncio.to_thread(d.execute_script, script)
        if s:
            return dict(s)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the page did not reach {condition!r} within {timeout:g} s")


def run_bench(args: argparse.Namespace, config: Config) -> int:
    why = browser_missing()
    if why:
        print(f"deeproom bench web: {why}")
        print(json.dumps({"error": why}))
        return 2
    result = asyncio.run(_bench(args))
    for k, v in result.items():
        print(f"{k:>26}: {v}")
    print(json.dumps(result))
    return 0
