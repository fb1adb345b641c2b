"""The class's voice modes from the participants panel, by rendered clicks (an app process, real relay).

The host's app (embedded relay on 127.0.0.1, a voice without audio devices) opens the participants
panel (P), its "Voice for the class…" row, and clicks "Teaching mode (push-to-talk)" and "Presenter
only": the room's `voice` and `muted_all` settings change, the rows show the new state, and a second
click turns each off again. Without an SFU the teaching-mode note is greyed; with one (a voice given
an SFU address) it names it and is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

SCRIPT = '''
from deeproom.net import BackgroundClient
from deeproom.scenes.session import RelaySession
SFU = {sfu!r}
def items(app):
    g = app.menus.geometry
    return [(t, bool(g.is_enabled(i))) for i, t in enumerate(g.items)]
client = BackgroundClient(None, room="voice-class", name="Host", data_dir="data").wait_ready(60)
options = {{"use_devices": False}}
if SFU:
    options["sfu_url"] = SFU
session = RelaySession(client, voice=True, voice_options=options)
session.voice.ready.result(60)
app = RoomApp(session, options=AppOptions(offscreen=True, size=(480, 360), start_position=(0.0, 1.6, 0.0)))
app.start()
out = {{}}
wait(app, lambda: app.room is not None and client.participant_id in app.room.participants, 60)
out["start"] = [app.room.settings.voice.value, app.room.settings.muted_all]
app.key("p"); app.step(2)
out["people"] = list(app.menus.geometry.items)
click_row(app, "Voice for the class")
out["voice_menu"] = items(app)
if not SFU:
    click_row(app, "Teaching mode")
    out["teaching_on"] = wait(app, lambda: app.room.settings.voice.value == "sfu", 30)
    out["after_teaching"] = wait(app, lambda: any(t == "Teaching mode (push-to-talk): on" for t, _ in items(app)), 10) and items(app)
    click_row(app, "Presenter only")
    out["presenter_on"] = wait(app, lambda: app.room.settings.muted_all, 30)
    out["after_presenter"] = wait(app, lambda: any(t == "Presenter only: on" for t, _ in items(app)), 10) and items(app)
    app.save_snapshot("voice.png")
    click_row(app, "back")
    out["people_after"] = list(app.menus.geometry.items)
    click_row(app, "Voice for the class")
    click_row(app, "Teaching mode")
    out["teaching_off"] = wait(app, lambda: app.room.settings.voice.value == "auto", 30)
    click_row(app, "Presenter only")
    out["presenter_off"] = wait(app, lambda: not app.room.settings.muted_all, 30)
    out["end"] = items(app)
app.close(); session.close(); client.close()
done(out)
'''

NOTE = "students use push-to-talk over the mesh; start the relay with --sfu for more than six voices"


@pytest.mark.slow
def test_host_switches_teaching_mode_and_presenter_only(run_scene: Callable[..., Any]) -> None:
    with_sfu = run_scene(SCRIPT.format(sfu="http://127.0.0.1:9/janus"), name="with_sfu", background=True)
    out = run_scene(SCRIPT.format(sfu=None), name="no_sfu", timeout=300)
    assert out["start"] == ["auto", False], out
    assert any(t.startswith("Voice for the class…") for t in out["people"]), out
    menu = dict(out["voice_menu"])
    assert menu["Teaching mode (push-to-talk): off"] and menu["Presenter only: off"], out  # host rows, enabled
    assert menu[NOTE] is False, out  # no SFU: the note is greyed
    assert any(t.startswith("Room voice: auto · yours: mesh") for t in menu), out
    assert out["teaching_on"] and out["after_teaching"], out
    assert out["presenter_on"] and out["after_presenter"], out
    assert any(t.startswith("Room voice: sfu") for t, _ in out["after_presenter"]), out
    assert "Voice for the class… (teaching mode, presenter only)" in out["people_after"], out
    assert out["teaching_off"] and out["presenter_off"], out
    end = dict(out["end"])
    assert "Teaching mode (push-to-talk): off" in end and "Presenter only: off" in end, out
    # with an SFU the note names it and is not greyed
    text, _ = with_sfu.communicate(timeout=300)
    from tests.scenes.conftest import parse  # type: ignore[import-not-found]

    s = parse(with_sfu.returncode, text, "")
    notes = [(t, ok) for t, ok in s["voice_menu"] if t.startswith("SFU at http://127.0.0.1:9/janus")]
    assert notes and notes[0][1], s
    assert NOTE not in dict(s["voice_menu"]), s
