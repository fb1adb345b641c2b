"""Voice for a class: the SFU from `deeproom serve --sfu`, announced by the relay, used by the app.

- The Janus configuration ships in the wheel: a wheel built from this tree holds the
  templates, and a copy installed from it (not this checkout) renders Janus's config.
- `deeproom serve --sfu URL` announces that SFU in every join ack; `--sfu auto` starts
  Janus itself (inside a network namespace here: Janus never gathers on loopback) and
  stops it by PID with the relay.
- Eight participants join through that relay with the app's own session
  (`scenes.session.RelaySession(voice=True)`, each on a BackgroundClient): six talk over
  a direct mesh; when the seventh appears everyone switches to the relay's SFU without
  rejoining and hears the presenter; the students are on push-to-talk; "mute all"
  (presenter only) silences a student holding the key while the presenter is heard.

The SFU tests need root (network namespaces) and skip with the reason otherwise.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from deeproom.net import RoomClient
from deeproom.net.voice import ToneTrack, VoiceConfig, rms
from deeproom.net.voice.audio import SAMPLE_RATE
from deeproom.net.voice.janus import find_janus, janus_pids_alive
from deeproom.net.voice.netns import Namespace, available, enter

from .conftest import (
    assert_tone_soon,
    free_port,
    start_relay_process,
    stop,
    voiced_fraction,
    wait_for_port,
)

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TEMPLATES = ("janus.jcfg.in", "janus.transport.http.jcfg.in", "janus.plugin.videoroom.jcfg.in")


# -- the wheel ------------------------------------------------------------------------------

def test_the_wheel_ships_the_janus_templates_and_its_install_renders_the_config(tmp_path: Path) -> None:
    src = tmp_path / "src"  # built from a copy: the build leaves build/ and *.egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("workspace", "net", "models", "scenes"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(wheels)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("deeproom-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for t in TEMPLATES:
        assert f"deeproom/net/voice/janus_templates/{t}" in names, sorted(n for n in names if "janus" in n)
    # every package of the tree is in the wheel (a subpackage missing from pyproject's list is not)
    folders = {"workspace": "deeproom", "net": "deeproom/net", "models": "deeproom/models", "scenes": "deeproom/scenes"}
    for top, dest in folders.items():
        for init in (REPO / top).rglob("__init__.py"):
            if "node_modules" not in init.parts:
                assert f"{dest}/{init.relative_to(REPO / top).as_posix()}" in names, init

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert not (site / "tools").exists()  # nothing from tools/ is needed any more
    out = tmp_path / "config"
    out.mkdir()
    # The installed copy, not this checkout: it comes first on sys.path, run from elsewhere.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import deeproom.net.voice.janus as j\n"
        "assert j.__file__.startswith(sys.argv[1]), j.__file__\n"
        "files = j.render_config({'@DIR@': sys.argv[2], '@PLUGINS@': '/p', '@TRANSPORTS@': '/t', '@EVENTS@': '/e',\n"
        "    '@LOGGERS@': '/l', '@DEBUG_LEVEL@': '2', '@RTP_PORTS@': '20000-40000', '@ADDRESS@': '10.9.8.7',\n"
        "    '@HTTP_PORT@': '8123'})\n"
        "import pathlib\n"
        "for name, text in files.items(): pathlib.Path(sys.argv[2], name).write_text(text)\n"
        "if j.find_janus():\n"
        "    s = j.JanusServer('10.9.8.7', http_port=8124, workdir=sys.argv[2] + '/server'); s.dir.mkdir(); s.write_config()\n"
        "print(j.__file__)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(site), str(out)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().startswith(str(site))
    http = (out / "janus.transport.http.jcfg").read_text()
    assert 'ip = "10.9.8.7"' in http and "port = 8123" in http
    main = (out / "janus.jcfg").read_text()
    assert 'ice_enforce_list = "10.9.8.7"' in main and f'configs_folder = "{out}"' in main and "@" not in main
    if find_janus():
        assert "port = 8124" in (out / "server" / "janus.transport.http.jcfg").read_text()


# -- serve --sfu URL -----------------------------------------------------------------------

def test_serve_announces_its_sfu_in_the_join_ack(tmp_path: Path) -> None:
    async def joined(url: str) -> str | None:
        async with RoomClient(url, room="r", name="A") as c:
            return c.sfu_url

    import asyncio

    sfu = "http://10.9.8.7:8088/janus"
    for extra, expect in ((("--sfu", sfu), sfu), ((), None)):
        port = free_port()
        data = tmp_path / f"relay-{port}"
        proc = start_relay_process(data, port, *extra)
        try:
            wait_for_port(port, proc)
            assert asyncio.run(joined(f"http://127.0.0.1:{port}")) == expect
        finally:
            stop(proc)
    bad = subprocess.run([sys.executable, "-m", "deeproom.cli", "--data-dir", str(tmp_path / "x"), "serve",
                          "--port", "0", "--sfu", "ftp://x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--sfu is a Janus URL" in bad.stdout


# -- eight voices through serve --sfu auto, from the app's session ---------------------------

def in_namespace_thread(ns: Namespace, fn: Callable[[], T], timeout: float) -> T:
    """Run `fn()` on a thread inside `ns`; threads and processes it starts are inside too."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            enter(ns.name)
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=target, name="class-test", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"the scenario did not finish in {timeout} s")
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


class Seat:
    """One participant as the app has it: a BackgroundClient and the scene's RelaySession with voice."""

    def __init__(self, url: str, name: str, data: Path, tone: float | None) -> None:
        from deeproom.net import BackgroundClient
        from deeproom.scenes.session import RelaySession

        self.client = BackgroundClient(url, room="class", name=name, data_dir=data).wait_ready(60)
        options: dict[str, Any] = {"config": VoiceConfig(record=True), "use_devices": False}
        if tone is not None:
            options["source"] = lambda: ToneTrack(tone, 0.4)
        self.session = RelaySession(self.client, voice=True, voice_options=options)
        self.session.voice.ready.result(30)
        self.id = self.client.participant_id

    @property
    def voice(self) -> Any:  # the RoomVoice the app's session runs
        return self.session.voice.voice

    @property
    def mode(self) -> str:
        return str(self.session.voice.mode)

    def heard(self, speaker: str, seconds: float = 0.5) -> Any:
        rec = self.voice.session.recorders.get(speaker)
        return rec.samples[-int(seconds * SAMPLE_RATE):] if rec is not None else []

    def forget(self, speaker: str) -> None:
        self.voice.session.recorders.pop(speaker, None)

    def hears(self, speaker: str, seconds: float = 1.0) -> bool:
        return len(self.heard(speaker, seconds)) >= seconds * SAMPLE_RATE

    def reconnects(self) -> int:
        return int(self.client._need().stats["reconnects"])

    def close(self) -> None:
        self.session.close()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_eight_voices_switch_to_the_relays_sfu_from_the_app_and_hear_the_presenter(tmp_path: Path) -> None:
    why = available()
    if why:
        pytest.skip(f"SFU tests need network namespaces: {why}")
    if find_janus() is None:
        pytest.fail("janus is not installed (it is listed in tools/system-packages.txt)")

    def scenario(ns: Namespace) -> None:
        port = 8765  # a namespace of our own: nothing else listens here
        log_path = tmp_path / "serve.log"
        with open(log_path, "wb") as log:
            relay = subprocess.Popen(
                ns.exec_args(sys.executable, "-m", "deeproom.cli", "--data-dir", str(tmp_path / "relay"), "serve",
                             "--host", "127.0.0.1", "--port", str(port), "--leave-grace", "1", "--sfu", "auto"),
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        seats: list[Seat] = []
        janus_pid = None
        try:
            wait_for_port(port, relay, timeout=60)
            text = log_path.read_text()
            m = re.search(r"janus pid (\d+)\) at (http://\S+)", text)
            assert m, text
            janus_pid, sfu_url = int(m.group(1)), m.group(2)
            assert sfu_url == f"http://{ns.address}:8088/janus"  # the namespace's address: not loopback
            url = f"http://127.0.0.1:{port}"

            # six people: the host, a presenter with a 440 Hz tone, four listeners (no microphone)
            host = Seat(url, "Host", tmp_path / "c0", None)
            seats.append(host)
            assert host.client._need().sfu_url == sfu_url  # announced in the join ack
            presenter = Seat(url, "Presenter", tmp_path / "c1", 440.0)
            seats.append(presenter)
            host.session.apply({"op": "set_role", "participant_id": presenter.id, "role": "presenter"}).result(10)
            for i in range(4):
                seats.append(Seat(url, f"L{i}", tmp_path / f"c{i + 2}", None))
            pid = presenter.id
            listeners = [s for s in seats if s is not presenter]
            wait_until(lambda: all(s.hears(pid) for s in listeners), 60, "the mesh carried the presenter")
            assert all(s.mode == "mesh" and pid in s.voice.session.links for s in listeners)
            assert_tone_soon(lambda: listeners[-1].heard(pid), 440.0)
            ids = [s.id for s in seats]

            # the seventh arrives (a student with a 660 Hz tone): above six, the room moves to the SFU
            student = Seat(url, "Student", tmp_path / "c6", 660.0)
            seats.append(student)
            wait_until(lambda: all(s.mode == "sfu" for s in seats), 60, "all seven switched to the SFU")
            wait_until(lambda: not any(s.voice.session.links for s in seats), 20, "the mesh links were dropped")
            late = Seat(url, "Late", tmp_path / "c7", None)  # the eighth joins a room already on the SFU
            seats.append(late)
            for s in seats:
                s.forget(pid)
            others = [s for s in seats if s is not presenter]
            wait_until(lambda: all(s.hears(pid) for s in others), 60, "everyone hears the presenter via the SFU")
            for s in others:
                assert s.mode == "sfu" and s.voice.session.sfu.url == sfu_url
                assert_tone_soon(functools.partial(s.heard, pid), 440.0)
            assert [s.id for s in seats[:6]] == ids and all(s.reconnects() == 0 for s in seats)  # nobody rejoined

            # students push to talk in a teaching room: silent until the key is held
            sid = student.id
            assert student.session.voice.talk_mode == "push" and presenter.session.voice.talk_mode == "open"
            wait_until(lambda: late.hears(sid, 0.5), 30, "the student's (silent) feed arrived")
            time.sleep(0.5)
            assert rms(late.heard(sid, 0.4)) < 0.01
            assert student.session.press_to_talk(True)
            wait_until(lambda: voiced_fraction(late.heard(sid, 0.4)) > 0.9, 20, "the student was heard on the key")
            assert_tone_soon(lambda: late.heard(sid, 0.4), 660.0)

            # presenter only ("mute all"): the student holding the key is silenced, the presenter is not
            host.session.apply({"op": "mute_all", "muted": True}).result(10)
            wait_until(lambda: rms(late.heard(sid, 0.4)) < 0.01, 20, "mute all silenced the student")
            late.forget(pid)
            wait_until(lambda: late.hears(pid, 0.5), 20, "the presenter still arrives")
            assert_tone_soon(lambda: late.heard(pid, 0.5), 440.0)
        finally:
            for s in reversed(seats):
                s.close()  # voice first, then the client (RelaySession.close)
            stop(relay)
        assert relay.returncode == 0, log_path.read_text()[-2000:]
        assert janus_pid is not None and not janus_pids_alive(janus_pid)  # serve stopped its Janus
        assert "deeproom relay stopped" in log_path.read_text()

    with Namespace.create() as ns:
        in_namespace_thread(ns, lambda: scenario(ns), timeout=400)
