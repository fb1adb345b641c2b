"""The per-frame pump and the content worker.

`FramePump.frame()` runs once per rendered frame: it drains the session's ONE inbox
(bounded), keeps one view per panel and avatar in step with the room, eases
avatars, draws your own lasers, publishes your pose ~20 times a second and lets the
HUD follow. Nothing in it does network, file or torch work: blobs are fetched and
decoded by `ContentWorker` in its own thread, analyses run in the engines; both post
into the same inbox.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deeproom.content import decode_content
from deeproom.errors import DeepRoomError
from deeproom.presence import PointerRay, Pose
from deeproom.scenes import geometry, painting
from deeproom.scenes.avatars import AvatarView
from deeproom.scenes.live_runs import FRAME_TYPES, LiveTable, moved_cloud
from deeproom.scenes.prepared import (
    CloudContent,
    ContentFailure,
    ContentRequest,
    Prepared,
    _prepare,
    prepare_source_only,
)
from deeproom.scenes.session import (
    ContentReady,
    EventMessage,
    Notice,
    PosesUpdate,
    RoomUpdate,
    Session,
    StatusUpdate,
)
from deeproom.scenes.views import PanelView
from deeproom.state import Room

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

POSE_INTERVAL = 0.05
"""Seconds between published poses (20 Hz)."""
MAX_MESSAGES_PER_FRAME = 200
"""A burst of messages is spread over frames rather than stalling one."""
PREVIEW_TIMEOUT = 3.0
"""Seconds a keyed move is shown before the room confirms it (a refused one snaps back)."""
GLIDE_TOGETHER = 2
"""Panels moved by one room change that glide rather than jump (a layout loaded moves many; one
drag moves one, already in small steps)."""
META_KEYS = ("classes", "tiles", "target", "kind")
"""The parts of a blob's meta the app acts on (pickers, tile clicks, titles)."""


def blob_facts(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What the app keeps of a blob besides the painted content (small, plain values)."""
    facts: dict[str, Any] = {k: meta[k] for k in META_KEYS if k in meta}
    image = arrays.get("image")
    if image is not None and image.ndim >= 2:
        facts["image_shape"] = (int(image.shape[0]), int(image.shape[1]))
    filters = arrays.get("filters")
    if meta.get("kind") == "filters" and filters is not None and filters.ndim in (3, 4):
        facts["tile_count"] = int(filters.shape[0])  # a filters panel's tiles: a click there is on a filter
    if meta.get("kind", "metrics") == "metrics" and str(meta.get("x", "step")) == "step":
        layers = painting.run_layers(meta, arrays)
        if layers:
            facts["layer_rows"] = layers  # a run's per-layer rows: a right-click there acts on that layer
    return facts


@dataclass(frozen=True)
class LiveContent(ContentReady):
    """A live panel repainted with stream deltas on top of the blob it shows (same key)."""

    step: float | None = None
    """The newest step it draws."""


@dataclass
class _Live:
    key: str
    size: tuple[float, float]
    table: LiveTable


@dataclass
class _LiveCloud:
    key: str
    what: str | None
    content: CloudContent
    facts: dict[str, Any] | None
    moved: bool = False


RECENT_DELTAS = 64
"""Deltas kept per run, replayed onto a newer blob that arrives without them."""


class ContentWorker:
    """Fetches and prepares blobs in its own thread; results go into the session's inbox.
    A source that says `error` shows an error card without fetching anything."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deeproom-content")
        self._closed = False
        # Live panels (a run's metrics), touched only on the worker thread:
        self._live: dict[str, _Live] = {}  # panel id -> the table its last blob became
        self._runs: dict[str, str] = {}  # panel id -> run
        self._recent: dict[str, collections.deque[dict[str, Any]]] = {}
        self._dirty: set[str] = set()
        self._clouds: dict[str, _LiveCloud] = {}  # panel id -> the cloud a run's frames move
        self._repaint_queued = threading.Event()

    def submit(self, req: ContentRequest, key: str) -> None:
        if not self._closed:
            self._pool.submit(self._run, req, key)

    def _run(self, req: ContentRequest, key: str) -> None:
        facts: dict[str, Any] | None = None
        prepared: Prepared
        try:
            error = req.source.get("error")
            if isinstance(error, str) and error:
                prepared = ContentFailure(error[:400])
            elif req.sha is None:
                prepared = prepare_source_only(req.kind, req.source, req.size)
            else:
                try:
                    data = self.session.fetch_blob(req.sha)
                except Exception as exc:  # any failure to get the bytes shows as an error card
                    prepared = ContentFailure(f"content blob {req.sha[:12]}… could not be fetched: {exc}")
                else:
                    prepared, facts = self._prepare(req, data)
                    if req.kind == "metrics" and isinstance(req.source.get("run"), str) \
                            and req.source.get("what", "metrics") == "metrics" and not isinstance(prepared, ContentFailure):
                        prepared, facts = self._go_live(req, key, data, prepared, facts)
                    elif isinstance(prepared, CloudContent) and isinstance(req.source.get("run"), str):
                        what = req.source.get("what")
                        self._clouds[req.panel_id] = _LiveCloud(key, what if isinstance(what, str) else None,
                                                                prepared, facts)
                        self._runs[req.panel_id] = str(req.source["run"])
        except Exception as exc:  # a bug in a painter must not kill the worker
            prepared = ContentFailure(f"preparing content failed: {type(exc).__name__}: {exc}")
        self.session.inbox.put(ContentReady(req.panel_id, key, prepared, facts))

    # --- live panels: stream deltas on top of the last blob -------------------------------------

    def _go_live(self, req: ContentRequest, key: str, data: bytes, prepared: Prepared,
                 facts: dict[str, Any] | None) -> tuple[Prepared, dict[str, Any] | None]:
        """Keep a run's metrics blob as a live table; deltas newer than it are replayed at once."""
        meta, arrays = decode_content(data)
        if str(meta.get("x", "step")) != "step":
            return prepared, facts  # not curves over steps (a checkpoint difference): nothing to append
        table = LiveTable.of(meta, arrays)
        run = str(req.source["run"])
        self._live[req.panel_id] = _Live(key, tuple(req.size), table)  # type: ignore[arg-type]
        self._runs[req.panel_id] = run
        for event in self._recent.get(run, ()):
            table.apply(event)
        if not table.changed:
            return prepared, facts
        table.changed = False
        return _prepare("metrics", table.meta, table.arrays, req.size), blob_facts(table.meta, table.arrays)

    def live(self, run: str, event: dict[str, Any]) -> None:
        """A stream delta of `run` (render thread: only queued here)."""
        if not self._closed:
            self._pool.submit(self._apply_live, run, event)

    def _apply_live(self, run: str, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in FRAME_TYPES:  # a cloud moves: its newest frame is all that matters
            for pid, cloud in self._clouds.items():
                if self._runs.get(pid) == run and cloud.what in FRAME_TYPES[str(kind)]:
                    try:
                        moved = moved_cloud(cloud.content, event)
                    except (ValueError, TypeError) as exc:  # a bad frame: a notice, the cloud stays
                        from deeproom.scenes.session import Notice

                        self.session.inbox.put(Notice(f"{run}: a cloud frame was refused: {exc}"))
                        return
                    if moved is not cloud.content:
                        cloud.content, cloud.moved = moved, True
                        self._dirty.add(pid)
            if self._dirty and not self._repaint_queued.is_set():
                self._repaint_queued.set()
                self._pool.submit(self._repaint)
            return
        recent = self._recent.setdefault(run, collections.deque(maxlen=RECENT_DELTAS))
        recent.append(event)
        for pid, live in self._live.items():
            if self._runs.get(pid) == run:
                live.table.apply(event)
                if live.table.changed:
                    self._dirty.add(pid)
        if self._dirty and not self._repaint_queued.is_set():
            self._repaint_queued.set()  # deltas queued meanwhile are applied before it paints
            self._pool.submit(self._repaint)

    def _repaint(self) -> None:
        self._repaint_queued.clear()
        dirty, self._dirty = self._dirty, set()
        for pid in dirty:
            cloud = self._clouds.get(pid)
            if cloud is not None and cloud.moved:
                cloud.moved = False
                self.session.inbox.put(LiveContent(pid, cloud.key, cloud.content, cloud.facts))
            live = self._live.get(pid)
            if live is None:
                continue
            t = live.table
            t.changed = False
            try:
                prepared: Prepared = _prepare("metrics", t.meta, t.arrays, live.size)
            except (ValueError, TypeError, KeyError, IndexError, DeepRoomError) as exc:
                prepared = ContentFailure(f"metrics content is not valid: {exc}")
            self.session.inbox.put(LiveContent(pid, live.key, prepared, blob_facts(t.meta, t.arrays),
                                               step=t.last_step if math.isfinite(t.last_step) else None))

    def forget(self, panel_id: str) -> None:
        """The panel went away (render thread: queued)."""
        if not self._closed:
            self._pool.submit(lambda: (self._live.pop(panel_id, None), self._runs.pop(panel_id, None),
                                       self._clouds.pop(panel_id, None)))

    @staticmethod
    def _prepare(req: ContentRequest, data: bytes) -> tuple[Prepared, dict[str, Any] | None]:
        try:
            meta, arrays = decode_content(data)
        except DeepRoomError as exc:
            return ContentFailure(f"content blob is corrupt: {exc}"), None
        try:
            return _prepare(req.kind, meta, arrays, req.size), blob_facts(meta, arrays)
        except (ValueError, TypeError, KeyError, IndexError, DeepRoomError) as exc:
            return ContentFailure(f"{req.kind} content is not valid: {exc}"), None

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


class FramePump:
    """The one per-frame hook: inbox in, views and pose out."""

    def __init__(self, app: RoomApp) -> None:
        self.app = app
        self.worker = ContentWorker(app.session)
        self.pending_content: dict[str, str] = {}  # panel id -> key of the content it waits for
        self._pose_seq = 0
        self._last_pose = 0.0
        self._last_frame = time.monotonic()
        self._aspect = 0.0

    def frame(self) -> None:
        app = self.app
        t0 = time.monotonic()
        dt = min(t0 - self._last_frame, 0.25)
        self._last_frame = t0
        self.drain()
        app.run_later()
        for pid, since in list(app.previews.items()):
            if t0 - since > PREVIEW_TIMEOUT:  # the room never confirmed: show what it says
                app.previews.pop(pid)
                view = app.panels.get(pid)
                if view is not None:
                    view.end_preview()
        if app.rig is not None:
            app.rig.update(dt)
            self.show_own_lasers()
        self.follow(dt)
        viewer = np.array(app.rig.head()[0]) if app.rig is not None else None
        for view in app.panels.values():
            view.ease(dt)
            if view.content is not None and viewer is not None:
                view.content.sync(view.to_local(viewer), t0)
        for pid, av in app.avatars.items():
            pose = app.poses.get(pid)
            dist = None
            if pose is not None and pose.pointer is not None:
                hit = app.pick(np.array(pose.pointer.origin), np.array(pose.pointer.direction))
                dist = hit.distance if hit is not None else None
            av.tick(dt, dist, viewer)
        app.menus.tick(t0)
        app.runs.tick()
        app.people.tick()
        if t0 - self._last_pose >= POSE_INTERVAL:
            self._last_pose = t0
            self.publish_pose()
        for cb in list(app.on_frame):
            cb(app)
        from ursina import window

        if window.aspect_ratio != self._aspect:  # the window was resized: the HUD follows
            self._aspect = window.aspect_ratio
            app.hud.layout()
        app.hud.update(t0)
        app.frames += 1
        app.frame_times.append(time.monotonic() - t0)
        if len(app.frame_times) > 600:
            del app.frame_times[:300]

    def show_own_lasers(self) -> None:
        app = self.app
        assert app.rig is not None
        rays, active = app.rig.hand_rays(), app.rig.active_hand
        menu = app.menus.geometry
        for side, laser in app.own_lasers.items():
            ray = rays.get(side)
            if ray is None:
                laser.hide()
                continue
            on_menu = geometry.ray_panel(ray[0], ray[1], menu.frame()) if menu is not None else None
            hit = app.pick(*ray)
            ends = [d for d in (on_menu[0] if on_menu else None, hit.distance if hit else None) if d is not None]
            distance = min(ends) if ends else None
            laser.colour(app.laser_colours[0] if side == active else app.laser_colours[1])
            laser.show(ray[0], ray[1], distance)

    def drain(self) -> int:
        """Apply what arrived (bounded per frame). Returns how many messages were handled."""
        app = self.app
        handled = 0
        latest_room: Room | None = None
        while handled < MAX_MESSAGES_PER_FRAME:
            try:
                item = app.session.inbox.get_nowait()
            except queue.Empty:
                break
            handled += 1
            for msg in app.session.translate(item):
                try:
                    if isinstance(msg, RoomUpdate):
                        latest_room = msg.room  # only the newest snapshot matters
                    elif isinstance(msg, PosesUpdate):
                        self.poses(msg.poses)
                    elif isinstance(msg, ContentReady):
                        self.content(msg)
                    elif isinstance(msg, EventMessage):
                        self.event(msg)
                    elif isinstance(msg, StatusUpdate):
                        app.connected = msg.connected
                        app.status_text = msg.text
                    elif isinstance(msg, Notice):
                        app.notify(msg.text, error=msg.error)
                except Exception as exc:  # one bad message must not stop the room
                    app.notify(f"could not apply {type(msg).__name__}: {type(exc).__name__}: {exc}")
        if latest_room is not None:
            try:
                self.room(latest_room)
            except Exception as exc:
                app.notify(f"could not show the room: {type(exc).__name__}: {exc}")
        return handled

    def room(self, room: Room) -> None:
        app = self.app
        app.room = room
        for pid in list(app.panels):
            if pid not in room.panels:
                app.panels.pop(pid).teardown()
                self.pending_content.pop(pid, None)
                app.blob_facts.pop(pid, None)
                self.worker.forget(pid)
                if app.selected == pid:
                    app.selected = None
                if app.drag is not None and app.drag.panel_id == pid:
                    app.drag = None
                app.menus.panel_removed(pid)
        moved = [v for pid, v in app.panels.items() if pid in room.panels and v.preview is None
                 and room.panels[pid].transform != v.panel.transform]
        if len(moved) >= GLIDE_TOGETHER:  # a layout loaded: everyone sees the panels glide to their places
            for v in moved:
                v.glide()
        for pid, panel in room.panels.items():
            view = app.panels.get(pid)
            if view is None:
                view = PanelView(app.panel_root, panel, app.colour_of)
                view.build()
                app.panels[pid] = view
                self.request_content(view)
            else:
                if app.drag is not None and app.drag.panel_id == pid and view.preview is not None:
                    view.panel = panel  # keep showing the drag preview until release
                    continue
                if pid in app.previews and view.preview is not None:
                    t = panel.transform
                    if np.allclose([*t.position, *t.rotation, *t.scale], [c for part in view.preview for c in part], atol=1e-5):
                        app.previews.pop(pid)
                        view.preview = None
                if view.sync(panel):
                    self.request_content(view)
        app.runs.sync_sources()
        me = app.session.participant_id
        for pid in list(app.avatars):
            if pid not in room.participants:
                app.avatars.pop(pid).teardown()
        for pid, part in room.participants.items():
            if pid == me:
                continue
            av = app.avatars.get(pid)
            if av is None:
                av = AvatarView(app.avatar_root, pid)
                av.build()
                app.avatars[pid] = av
            av.sync(app.poses.get(pid), part.name, part.colour)
            av.set_hand(part.hand_raised)

    def request_content(self, view: PanelView) -> None:
        p = view.panel
        sha = p.content.refs[0] if p.content.refs else None
        error = p.content.source.get("error")
        mark = f":e{hash(error) & 0xffffffff:x}" if isinstance(error, str) and error else ""
        key = f"{sha}:{view.size[0]:.3f}x{view.size[1]:.3f}{mark}"
        if self.pending_content.get(p.id) == key or view.content_key == key:
            return
        self.pending_content[p.id] = key
        if view.content is None:
            view.show(ContentFailure("loading…", waiting=True), "")
        self.worker.submit(ContentRequest(p.id, p.kind.value, sha, tuple(view.size), dict(p.content.source)), key)

    def content(self, msg: ContentReady) -> None:
        view = self.app.panels.get(msg.panel_id)
        if isinstance(msg, LiveContent):  # deltas on top of the blob the panel shows
            if view is None or view.content_key != msg.key or msg.panel_id in self.pending_content:
                return  # a newer blob is on its way (it gets the same deltas)
            self.app.blob_facts[msg.panel_id] = dict(msg.meta or {})
            view.show(msg.prepared, msg.key)
            self.app.runs.shown(msg.panel_id, msg.step)
            return
        if view is None or self.pending_content.get(msg.panel_id) != msg.key:
            return  # stale: the panel changed or went away meanwhile
        del self.pending_content[msg.panel_id]
        self.app.blob_facts[msg.panel_id] = dict(msg.meta or {})
        view.show(msg.prepared, msg.key)

    def poses(self, poses: Mapping[str, Pose]) -> None:
        app = self.app
        me = app.session.participant_id
        for pid, pose in poses.items():
            if pid == me:
                continue
            app.poses[pid] = pose
            av = app.avatars.get(pid)
            if av is not None:
                av.sync(pose, av.name, av.colour)

    def event(self, msg: EventMessage) -> None:
        app = self.app
        if msg.kind == "summon":
            pos = msg.payload.get("position")
            yaw = msg.payload.get("yaw")
            if (isinstance(pos, list | tuple) and len(pos) == 3 and all(isinstance(v, int | float) for v in pos)
                    and all(math.isfinite(v) and abs(v) < 1000 for v in pos) and app.rig is not None):
                app.rig.teleport((float(pos[0]), float(pos[1]), float(pos[2])),
                                 float(yaw) if isinstance(yaw, int | float) and math.isfinite(yaw) else None)
                app.notify(f"{app.name_of(msg.sender)} summoned you", error=False)
        elif msg.kind == "stream":
            if not app.runs.on_stream(msg.sender, msg.payload):
                app.menus.on_stream(msg.sender, msg.payload)
        elif msg.kind == "notice":
            text = msg.payload.get("text")
            if isinstance(text, str):
                app.notify(text[:200], error=bool(msg.payload.get("error", False)))

    def follow(self, dt: float) -> None:
        app = self.app
        room = app.room
        app.following = None
        if room is None or app.rig is None:
            return
        s = room.settings
        me = app.session.participant_id
        if s.follow.value == "presenter" and s.presenter and s.presenter != me:
            pose = app.poses.get(s.presenter)
            app.following = s.presenter
            if pose is not None:
                # Stand half a metre behind the presenter, looking where they look.
                rot = pose.head_rotation
                fwd = geometry.quat_matrix(rot)[:, 2]
                back = np.array(pose.head_position) - 0.5 * np.array([fwd[0], 0.0, fwd[2]])
                app.rig.follow((float(back[0]), float(back[1]), float(back[2])), rot, dt)

    def publish_pose(self) -> None:
        app = self.app
        if app.rig is None:
            return
        pos, rot = app.rig.head()
        left, right = app.rig.hands()
        ray = app.rig.pointer_ray()
        pointer = None
        if ray is not None and (app.drag is not None or app.pick(ray[0], ray[1]) is not None):
            pointer = PointerRay(tuple(float(c) for c in ray[0]), tuple(float(c) for c in ray[1]))  # type: ignore[arg-type]
        self._pose_seq += 1
        try:
            app.session.publish_pose(Pose(head_position=pos, head_rotation=rot, left=left, right=right,
                                          pointer=pointer, seq=self._pose_seq, sent_at=time.time()))
        except Exception as exc:  # a lost relay must not stop the frame loop
            app.connected = False
            app.status_text = f"pose not sent: {exc}"
