"""Menus in the world and the actions they send.

One `WorldMenu` at a time shows either the add-panel menu (Tab / the XR menu
button) or a panel's action menu (right-click on a panel or a layer; the XR menu
button with the laser on a panel), then one picker per parameter the action needs
(layer, class, choice, count ...). Everything in an action menu comes from the
panel's content source (`actions`, `unavailable`; see `actions.py`): the app knows
no analysis by name. A chosen action goes to the panel's engine as a "steer" event;
the engine's "stream" reports (channel "action") draw a progress bar on the panel,
and a refusal or failure shows on the panel and, for whoever asked, in the HUD.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deeproom.scenes import actions as act
from deeproom.scenes import painting
from deeproom.scenes.menu import MenuGeometry, WorldMenu
from deeproom.scenes.panel_status import StatusStrip
from deeproom.scenes.prepared import GraphContent, texture_size
from deeproom.scenes.views import CloudView, GraphView, Hit, PanelView
from deeproom.state import PanelKind

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

FAILURE_SECONDS = 10.0
"""How long a failure or refusal stays on its panel."""
MORE = "more…"
SEARCH_ROW = "Search layer…"
_ids = itertools.count(1)


@dataclass
class _Shown:
    """What one panel's status strip says."""

    progress: act.Progress
    since: float


CLICK_GIVES = (("layer", "layer"), ("tile", "index"), ("selection", "ids"))
"""(param type, key in `context_of`'s values): what a right-click fills, by declared type."""


def given_params(action: act.ActionSpec, context: Mapping[str, Any]) -> dict[str, Any]:
    """What the click gave (`context_of`), under the names the action declares for those
    types: a right-clicked layer fills its first "layer" param, a tile its "tile" param, a
    cloud selection its "selection" param, whatever they are called. An action with no
    "selection" param still gets the ids as "ids" (the contract's first form)."""
    values = dict(context)
    for typ, given in CLICK_GIVES:
        p = action.param(typ)
        if p is not None and given in values and p.name != given:
            values[p.name] = values.pop(given)
    return values


class ActionMenus:
    def __init__(self, app: RoomApp) -> None:
        self.app = app
        self.menu = WorldMenu()
        self.mode = "closed"  # "add" | "actions" | "picker"
        self.flow: act.ActionFlow | None = None
        self._rows: list[tuple[str, Any]] = []  # what each row of the open menu does
        self._picker: tuple[act.ParamSpec, list[tuple[str, Any]]] | None = None
        self.status: dict[str, _Shown] = {}  # panel id -> what its strip shows
        self._strips: dict[str, StatusStrip] = {}
        self.sent: list[dict[str, Any]] = []  # requests this app sent (tests, benchmark)
        self.reports: list[act.Progress] = []  # reports received, newest last (bounded)
        self.drawn_at: dict[str, float] = {}  # request id -> when its result panel was first drawn

    # --- the open menu ----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.menu.is_open

    @property
    def rows(self) -> list[tuple[str, Any]]:
        """What each row of the open menu does: ("action", ActionSpec), ("value", v), ("why", text),
        ("add", kind), ("search", panel), ("jump", (panel, key)), ("more", None) ..."""
        return list(self._rows)

    @property
    def picker(self) -> act.ParamSpec | None:
        """The parameter the open picker asks for (None when no picker is open)."""
        return self._picker[0] if self._picker is not None and self.mode == "picker" else None

    @property
    def geometry(self) -> MenuGeometry | None:
        return self.menu.geometry

    def _open(self, title: str, rows: list[tuple[str, Any]], labels: list[str], enabled: list[bool], *,
              marks: list[tuple[float, float, float] | None] | None = None, keep_place: bool = False) -> None:
        head = self.app.rig.head() if self.app.rig is not None else ((0.0, 1.6, 0.0), (1.0, 0.0, 0.0, 0.0))
        self._rows = rows
        self.menu.open(*head, parent=self.app.scene_root, items=labels, title=title, enabled=enabled,
                       marks=marks or (), keep_place=keep_place)

    def open_list(self, title: str, rows: list[tuple[str, Any]], labels: list[str], enabled: list[bool], *,
                  marks: list[tuple[float, float, float] | None] | None = None, keep_place: bool = False) -> None:
        """A menu of other parts' rows: ("do", fn) closes the menu and calls fn; ("open", fn) calls fn
        (which opens the next menu); ("why", text) is a greyed row that says why."""
        self.flow = None
        self._picker = None
        self._open(title, rows, labels, enabled, marks=marks, keep_place=keep_place and self.is_open)
        self.mode = "list"

    def close(self) -> None:
        self.menu.close()
        self.mode = "closed"
        self.flow = None
        self._picker = None
        self._rows = []

    def open_add_panel(self) -> None:
        """The add-panel menu, a metre in front of the viewer's eyes, facing them."""
        kinds = [k.value for k in PanelKind]
        rows: list[tuple[str, Any]] = [("add", k) for k in kinds]
        rows.append(("open", self.app.people.open))  # XR has no P key: the class from this menu
        self._open("Add a panel", rows, [*kinds, "People & class…"], [True] * len(rows))
        self.mode = "add"

    def press(self, origin: np.ndarray, direction: np.ndarray) -> None:
        g = self.menu.geometry
        row = g.pick(origin, direction) if g is not None else None
        if row is None:
            self.close()
            return
        self.pick(row)

    def key(self, name: str) -> None:
        if name.isdigit():
            self.pick((int(name) - 1) % 10)
        elif name in ("tab", "escape", "menu"):
            self.close()

    def pick(self, row: int) -> None:
        """Row `row` of the open menu was chosen (a click, the laser or a digit key)."""
        g = self.menu.geometry
        if g is None or not 0 <= row < len(self._rows):
            self.close()
            return
        if not g.is_enabled(row):
            what, arg = self._rows[row]
            self.app.notify(str(arg) if what == "why" else "not available")
            return  # the menu stays: pick another row
        what, arg = self._rows[row]
        if what == "do":
            self.close()
            arg()
        elif what == "open":
            arg()
        elif what == "add":
            self.close()
            self.app.room_actions.add_panel(arg)
        elif what == "action":
            assert self.flow is not None
            self.flow.action = arg
            self.flow.values = given_params(arg, self.flow.values)
            self._next()
        elif what == "value":
            assert self.flow is not None and self._picker is not None
            self.flow.choose(self._picker[0], arg)
            self._next()
        elif what == "search":
            self._search_picker(str(arg), 0)
        elif what == "search_page":
            self._search_picker(*arg)
        elif what == "jump":
            self.close()
            self.app.search.jump(*arg)
        elif what == "more":
            assert self.flow is not None and self._picker is not None
            self.flow.page += 1
            self._show_picker(*self._picker)

    # --- a panel's actions -------------------------------------------------------------------

    def context_of(self, view: PanelView, hit: Hit | None) -> tuple[str | None, dict[str, Any]]:
        """What a right-click points at: ("layer", {"layer": name}), ("selection", {"ids": [...]}),
        ("tile", {"index": i}) or (None, {}) for the panel itself."""
        content = view.content
        if hit is not None and isinstance(content, GraphView) and content.layout is not None:
            i = content.node_at(hit.u, hit.v)
            if i is not None and not content.layout.nodes[i].collapsed:
                return "layer", {"layer": content.layout.nodes[i].name}
        if isinstance(content, CloudView) and len(content.selection):
            return "selection", {"ids": [int(i) for i in content.selection]}
        if hit is not None:
            row = self.layer_row_of(view, hit)
            if row is not None:
                return "layer", {"layer": row}
            tile = self.tile_of(view, hit)
            if tile is not None:
                return "tile", {"index": tile}
        return None, {}

    def offered(self, view: PanelView, on: str | None) -> tuple[list[act.ActionSpec], list[tuple[str, str]]]:
        """The actions a menu on this panel offers here, and the greyed ones with why."""
        return act.menu_entries(self.target(view, on).panel.content.source, on, self.role())

    def target(self, view: PanelView, on: str | None) -> PanelView:
        """The panel whose declared actions a menu here offers: the panel itself, or for a layer
        row of a run's metrics panel (which declares no layer actions) the run's panel that does
        (its graph: freeze, unfreeze, embed this layer)."""
        if on != "layer":
            return view
        if act.menu_entries(view.panel.content.source, on, "host") != ([], []):
            return view
        run = view.panel.content.source.get("run")
        if not isinstance(run, str):
            return view
        for other in self.app.panels.values():
            if other is not view and other.panel.content.source.get("run") == run \
                    and act.menu_entries(other.panel.content.source, on, "host") != ([], []):
                return other
        return view

    def layer_row_of(self, view: PanelView, hit: Hit) -> str | None:
        """The layer of a run's metrics panel row under a hit (its per-layer section), or None."""
        from deeproom.scenes import painting

        rows = self.app.blob_facts.get(view.panel.id, {}).get("layer_rows")
        if view.panel.kind.value != "metrics" or not isinstance(rows, list) or not rows:
            return None
        w, h = view.size
        tw, th = texture_size((w, h))
        y = (h / 2 - hit.v) / h * th
        i = painting.rows_layout(len(rows), tw, th).row_at(y)
        return str(rows[i]) if i is not None and i < len(rows) else None

    def layer_row_point(self, view: PanelView, layer: str) -> tuple[float, float] | None:
        """Face coordinates (u, v) of the middle of `layer`'s row on a run's metrics panel."""
        from deeproom.scenes import painting

        rows = self.app.blob_facts.get(view.panel.id, {}).get("layer_rows")
        if not isinstance(rows, list) or layer not in rows:
            return None
        w, h = view.size
        tw, th = texture_size((w, h))
        lay = painting.rows_layout(len(rows), tw, th)
        i = rows.index(layer)
        if i >= lay.rows:
            return None
        y = lay.top + (i + 0.5) * lay.row_h
        return -w * 0.3, h / 2 - y / th * h

    def has_actions(self, view: PanelView, hit: Hit | None) -> bool:
        on, _ = self.context_of(view, hit)
        ok, greyed = self.offered(view, on)
        return bool(ok or greyed)

    def open_actions(self, view: PanelView, hit: Hit | None) -> bool:
        """The action menu of a panel (or of the layer, tile or selection the hit is on)."""
        on, context = self.context_of(view, hit)
        ok, greyed = self.offered(view, on)
        shown_on = view
        view = self.target(view, on)
        source = view.panel.content.source
        search = isinstance(shown_on.content, GraphView)  # XR has no keyboard: find a layer from a list
        if not ok and not greyed and not search and not isinstance(shown_on.content, CloudView):
            self.app.notify(f"{view.panel.title}: no actions here")
            return False
        engine = source.get("engine") if isinstance(source.get("engine"), str) else view.panel.owner
        self.flow = act.ActionFlow(view.panel.id, str(engine), act.ActionSpec("", ""), dict(context))
        rows: list[tuple[str, Any]] = [("action", a) for a in ok] + [("why", why) for _, why in greyed]
        labels = [f"{a.group} · {a.label}" if a.group else a.label for a in ok]
        labels += [f"{label} — unavailable" for label, _ in greyed]
        if search:
            rows.insert(len(ok), ("search", view.panel.id))
            labels.insert(len(ok), SEARCH_ROW)
            ok_count = len(ok) + 1
        else:
            ok_count = len(ok)
        if isinstance(shown_on.content, CloudView):  # the app's own: open the cloud around you (O)
            rows.insert(ok_count, ("do", lambda: self.app.clouds.toggle_room_scale(shown_on)))
            labels.insert(ok_count, "Back to a panel" if shown_on.room_scale else "Open at room scale")
            ok_count += 1
        where = f" · {context['layer']}" if on == "layer" else f" · {len(context['ids'])} points" if on == "selection" \
            else f" · {'filter' if self.filter_grid(shown_on) is not None else 'tile'} {context['index']}" if on == "tile" else ""
        self._open(f"{shown_on.panel.title}{where}"[:60], rows, labels, [True] * ok_count + [False] * len(greyed))
        self.mode = "actions"
        return True

    def _search_picker(self, panel_id: str, page: int) -> None:
        """The graph's groups (or layers) as a picker; a row goes there (`search.LayerSearch.jump`)."""
        options = self.app.search.choices(panel_id)
        if not options:
            self.app.notify("this graph has nothing to find")
            self.close()
            return
        per = act.PICKER_ROWS - 1
        start = (page * per) % len(options)
        shown = options[start:start + per] if len(options) > act.PICKER_ROWS else options
        rows: list[tuple[str, Any]] = [("jump", (panel_id, key)) for _, key in shown]
        labels = [label[:56] for label, _ in shown]
        if len(options) > act.PICKER_ROWS:
            rows.append(("search_page", (panel_id, page + 1)))
            labels.append(f"{MORE} ({start + 1}-{start + len(shown)} of {len(options)})")
        self._picker = None
        self._open(SEARCH_ROW, rows, labels, [True] * len(rows))
        self.mode = "picker"

    def ask(self, flow: act.ActionFlow) -> None:
        """Walk the pickers `flow` still needs (some values already given), then send it."""
        self.flow = flow
        self._next()

    def _next(self) -> None:
        """Show the picker of the next parameter the action still needs, or send it."""
        flow = self.flow
        assert flow is not None
        while (p := flow.next_param()) is not None:
            options = self._options(flow, p)
            if not options:
                if p.optional or p.default is not None:
                    flow.choose(p, p.default)
                    continue
                self.app.notify(f"{flow.action.label}: nothing to choose for {p.label}")
                self.close()
                return
            self._show_picker(p, options)
            return
        self.close()
        self.send(flow)

    def _show_picker(self, p: act.ParamSpec, options: list[tuple[str, Any]]) -> None:
        flow = self.flow
        assert flow is not None
        self._picker = (p, options)
        per = act.PICKER_ROWS - 1
        start = (flow.page * per) % max(len(options), 1)
        page = options[start:start + per] if len(options) > act.PICKER_ROWS else options
        rows: list[tuple[str, Any]] = [("value", v) for _, v in page]
        labels = [label for label, _ in page]
        if len(options) > act.PICKER_ROWS:
            rows.append(("more", None))
            labels.append(f"{MORE} ({start + 1}-{start + len(page)} of {len(options)})")
        self._open(f"{flow.action.label}: {p.label}", rows, labels, [True] * len(rows))
        self.mode = "picker"

    def _options(self, flow: act.ActionFlow, p: act.ParamSpec) -> list[tuple[str, Any]]:
        view = self.app.panels.get(flow.panel_id)
        source: Mapping[str, Any] = view.panel.content.source if view is not None else {}
        facts = self.app.blob_facts.get(flow.panel_id, {})
        return act.param_options(p, classes=act.class_names(source, facts), layers=self._layers(source),
                                 n_classes=self._n_classes(source, facts))

    def _layers(self, source: Mapping[str, Any]) -> list[str]:
        """The layer names of the model a source is about, from that model's graph panel."""
        model = source.get("model")
        for view in self.app.panels.values():
            prepared = view.prepared
            if isinstance(prepared, GraphContent) and view.panel.content.source.get("model") == model:
                nodes = prepared.meta.get("nodes", [])
                return [str(n["name"]) for n in nodes if isinstance(n, Mapping) and isinstance(n.get("name"), str)]
        return []

    @staticmethod
    def _n_classes(source: Mapping[str, Any], facts: Mapping[str, Any]) -> int:
        for where in (source, facts):
            n = where.get("num_classes")
            if isinstance(n, int) and 0 < n <= 100_000:
                return n
        return 10

    def role(self) -> str:
        room = self.app.room
        me = self.app.session.participant_id
        if room is not None and me in room.participants:
            return room.participants[me].role.value
        return "viewer"

    # --- sending and progress ------------------------------------------------------------------

    def send(self, flow: act.ActionFlow) -> str:
        """Send a chosen action to its engine; its panel shows it as queued at once."""
        app = self.app
        me = re.sub(r"[^A-Za-z0-9_.:-]", "_", app.session.participant_id)[:40]
        request_id = f"{me}:{next(_ids)}:{int(time.time() * 1000) % 10**9}"
        payload = {"action": flow.action.name, "panel_id": flow.panel_id, "params": flow.params(),
                   "request_id": request_id}
        self.sent.append({**payload, "to": flow.engine, "at": time.monotonic()})
        self._show(act.Progress(flow.panel_id, request_id, flow.action.name, app.session.participant_id,
                                "queued", 0.0, f"{flow.action.label}: sent", None))
        fut = app.session.send_event("steer", payload, to=flow.engine)
        inbox = app.session.inbox
        label, pid, by = flow.action.label, flow.panel_id, app.session.participant_id

        def done(f: Any) -> None:
            exc = f.exception()
            if exc is not None:  # the relay refused it (a viewer, a gone engine): a report like the engine's
                from deeproom.scenes.session import EventMessage

                inbox.put(EventMessage("stream", by, {
                    "panel_id": pid, "channel": "action", "request_id": request_id, "action": flow.action.name,
                    "by": by, "state": "refused", "progress": 0.0, "message": f"{label} refused: {exc}"}))

        fut.add_done_callback(done)
        return request_id

    def cancel(self, request_id: str, engine: str) -> None:
        self.app.session.send_event("steer", {"action": "cancel", "request_id": request_id}, to=engine)

    def on_stream(self, sender: str, payload: Mapping[str, Any]) -> None:
        """A "stream" event: an action's progress report draws on its panel(s)."""
        try:
            report = act.parse_progress(payload)
        except act.ActionError as exc:
            self.app.notify(f"a bad action report from {self.app.name_of(sender)}: {exc}")
            return
        if report is None:
            return
        self.reports.append(report)
        del self.reports[:-200]
        self._show(report)
        if report.failed and report.by == self.app.session.participant_id:
            self.app.notify(report.message or f"{report.action} {report.state}")

    def show_report(self, report: act.Progress) -> None:
        """Draw a report on its panel(s) as if the engine had sent it (a run's error events)."""
        self.reports.append(report)
        del self.reports[:-200]
        self._show(report)

    def _show(self, report: act.Progress) -> None:
        now = time.monotonic()
        for pid in (report.panel_id, report.result_panel):
            if pid is None:
                continue
            shown = self.status.get(pid)
            if shown is not None and shown.progress.request_id != report.request_id and shown.progress.pending \
                    and not report.pending and pid != report.panel_id:
                continue  # an older request's end does not hide a newer one's bar
            if report.state in ("done", "cancelled"):
                self.status.pop(pid, None)
            else:
                self.status[pid] = _Shown(report, now)

    def panel_removed(self, panel_id: str) -> None:
        self.status.pop(panel_id, None)
        strip = self._strips.pop(panel_id, None)
        if strip is not None:
            strip.clear()
        if self.flow is not None and self.flow.panel_id == panel_id:
            self.close()

    def tick(self, now: float) -> None:
        """Per frame: draw (or clear) each panel's status strip; no I/O."""
        app = self.app
        for pid, shown in list(self.status.items()):
            if shown.progress.failed and now - shown.since > FAILURE_SECONDS:
                del self.status[pid]
        for pid in list(self._strips):
            if pid not in self.status or pid not in app.panels:
                self._strips.pop(pid).clear()
        for pid, shown in self.status.items():
            view = app.panels.get(pid)
            if view is None:
                continue
            strip = self._strips.get(pid)
            if strip is None or strip.parent is not view.root:
                strip = self._strips[pid] = StatusStrip(view.root, view.size)
            p = shown.progress
            text = p.message or f"{p.action} {p.state}"
            strip.show(p.progress if p.pending else None, text, p.failed, view.size)
        for rid in {r.request_id for r in self.reports[-20:] if r.state == "done" and r.result_panel}:
            if rid not in self.drawn_at:
                r = next(r for r in reversed(self.reports) if r.request_id == rid and r.result_panel)
                view = app.panels.get(r.result_panel or "")
                if view is not None and view.content is not None and not app.pump.pending_content.get(view.panel.id):
                    self.drawn_at[rid] = now

    # --- input strips -------------------------------------------------------------------------

    def filter_grid(self, view: PanelView) -> painting.TileGrid | None:
        """Where a filters panel's tiles are painted on its face (the painting's own `tile_grid`)."""
        count = self.app.blob_facts.get(view.panel.id, {}).get("tile_count")
        if view.panel.kind.value != "filters" or not isinstance(count, int) or count < 1:
            return None
        return painting.tile_grid(count, *texture_size(view.size), titled=True)

    def tile_of(self, view: PanelView, hit: Hit) -> int | None:
        """The tile under a hit: of an input strip (an image panel whose blob meta has "tiles"), or
        the filter of a filters panel (a run's declares freeze_filter / unfreeze_filter on it)."""
        w, h = view.size
        grid = self.filter_grid(view)
        if grid is not None:
            tw, th = texture_size((w, h))
            return grid.at((hit.u + w / 2) / w * tw, (h / 2 - hit.v) / h * th)
        facts = self.app.blob_facts.get(view.panel.id, {})
        tiles, shape = facts.get("tiles"), facts.get("image_shape")
        if view.panel.kind.value != "image" or not isinstance(tiles, Mapping) or shape is None:
            return None
        w, h = view.size
        tw, th = texture_size((w, h))
        x = (hit.u + w / 2) / w * tw
        y = (h / 2 - hit.v) / h * th
        return act.tile_at(tiles, shape, (tw, th), x, y)

    def tile_point(self, view: PanelView, index: int) -> tuple[float, float] | None:
        """Face coordinates (u, v: unscaled metres from the centre) of tile `index`'s middle."""
        facts = self.app.blob_facts.get(view.panel.id, {})
        tiles, shape = facts.get("tiles"), facts.get("image_shape")
        w, h = view.size
        tw, th = texture_size((w, h))
        grid = self.filter_grid(view)
        at: tuple[float, float] | None
        if grid is not None:
            at = grid.centre(index) if 0 <= index < grid.count else None
        elif not isinstance(tiles, Mapping) or shape is None:
            return None
        else:
            at = act.tile_centre(tiles, shape, (tw, th), index)
        if at is None:
            return None
        return at[0] / tw * w - w / 2, h / 2 - at[1] / th * h

    def tile_click(self, view: PanelView, hit: Hit) -> bool:
        """A click on a tile of an input strip sends the declared tile action with {"index": i}; on a
        filter tile it opens the tile's action menu (freeze or unfreeze that filter: a choice to make)."""
        index = self.tile_of(view, hit)
        if index is None:
            return False
        if self.filter_grid(view) is not None:
            return self.has_actions(view, hit) and self.open_actions(view, hit)
        actions, _, _ = act.parse_actions(view.panel.content.source)
        tile_action = next((a for a in actions if a.param("tile") is not None), None)
        if tile_action is None:
            return False
        if not act.role_allows(self.role(), tile_action.role):
            self.app.notify(f"{tile_action.label} needs the {tile_action.role} role")
            return False
        param = tile_action.param("tile")
        assert param is not None
        source = view.panel.content.source
        engine = source.get("engine") if isinstance(source.get("engine"), str) else view.panel.owner
        flow = act.ActionFlow(view.panel.id, str(engine), tile_action, {param.name: index})
        for p in tile_action.params:  # the others take their defaults
            if p.name not in flow.values:
                flow.choose(p, p.default)
        self.send(flow)
        labels = self.app.blob_facts.get(view.panel.id, {}).get("tiles", {}).get("labels")
        what = f" ({labels[index]})" if isinstance(labels, list) and index < len(labels) else ""
        self.app.notify(f"{tile_action.label}: input {index}{what}", error=False)
        return True
