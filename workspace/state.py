"""What a room is: panels, participants and settings as plain, typed, immutable data.

These types carry no behaviour beyond validation and conversion to and from plain
JSON-able dicts (the form they take in the replicated document, on the wire and in
layout files). Nothing here knows about Ursina, torch or sockets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

from deeproom.errors import ValidationError

# Limits. Each is part of the documented contract (docs/layout-format.md).
MAX_TITLE = 120
MAX_NAME = 64
MAX_ID = 64
MAX_PANELS = 5000
MAX_SOURCE_BYTES = 16 * 1024
MAX_CONTENT_REFS = 64
POSITION_LIMIT = 1000.0
SCALE_MIN, SCALE_MAX = 0.05, 50.0
SIZE_MIN, SIZE_MAX = 0.05, 20.0
CAPACITY_MIN, CAPACITY_MAX = 1, 500
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and lists in a content source (and in a content blob's meta)."""
MAX_JSON_NODES = 20_000
"""Most values (objects, lists, scalars) in one content source."""
MAX_KEY = 256
"""Longest key of an object in a content source."""
MAX_INT = 2**53
"""Whole numbers in a content source lie within ±2**53 (what a JavaScript number holds exactly)."""

# Every pattern is matched with fullmatch: `$` would let a trailing newline through.
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_COLOUR_RE = re.compile(r"#[0-9a-fA-F]{6}")
# Control characters (C0 but tab and newline, DEL, C1) and lone surrogates, which cannot
# be encoded as UTF-8 and so cannot enter the CRDT. `_BAD_LINE` also refuses tab and newline.
_BAD_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_JSON_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


SYSTEM = "system"
"""The actor id the relay (or a local session) uses for changes no participant makes:
joins, leaves, kicks. No participant may have it as their id."""

E = TypeVar("E", bound=StrEnum)


def is_sha256(value: object) -> bool:
    """Whether `value` is a blob id: 64 lowercase hex digits, nothing before or after (not even a newline)."""
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


class PanelKind(StrEnum):
    """What a panel shows."""

    MODEL_GRAPH = "model_graph"
    METRICS = "metrics"
    CONFUSION_MATRIX = "confusion_matrix"
    LATENT_CLOUD = "latent_cloud"
    FEATURE_MAPS = "feature_maps"
    FILTERS = "filters"
    GRAD_CAM = "grad_cam"
    ATTENTION = "attention"
    IMAGE = "image"
    NOTE = "note"


class Role(StrEnum):
    """What a participant may do, most powerful first."""

    HOST = "host"
    PRESENTER = "presenter"
    MEMBER = "member"
    VIEWER = "viewer"


class VoiceMode(StrEnum):
    """How voice is carried in the room."""

    OFF = "off"
    MESH = "mesh"  # direct peer connections, small rooms
    SFU = "sfu"  # a forwarding server, teaching rooms
    AUTO = "auto"  # mesh up to a threshold, then SFU


class FollowMode(StrEnum):
    """Whether participants' views follow the presenter's."""

    OFF = "off"
    PRESENTER = "presenter"


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(m.value for m in enum)


def brief(value: Any, limit: int = 60) -> str:
    """A short description of any value for an error message; never raises.

    Hostile input reaches error messages: `repr` of a 5,000-digit int raises, of a list
    nested 10,000 deep recurses, of a 10 MB string is 10 MB. This stays short.
    """
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"a whole number of {value.bit_length()} bits"
    if isinstance(value, str):
        text = repr(value[:limit])
        return text + "…" if len(value) > limit else text
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes"
    if isinstance(value, list | tuple):
        if len(value) <= 8 and all(v is None or isinstance(v, bool | int | float) for v in value):
            return "[" + ", ".join(brief(v) for v in value) + "]"
        return f"a list of {len(value)} items"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} fields"
    return f"a {type(value).__name__}"


def field_names(keys: Any) -> list[str]:
    """Keys of a hostile mapping as sorted, printable names (keys may be of any type)."""
    return sorted(k if isinstance(k, str) and not _BAD_LINE.search(k) and len(k) <= 40 else brief(k, 40) for k in keys)


def parse_enum(enum: type[E], value: Any, what: str) -> E:
    """`value` as a member of `enum`, or a ValidationError listing what is allowed."""
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    raise ValidationError(f"{what} must be one of {_choices(enum)}; got {brief(value, 40)}")


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValidationError(f"{what} must be 1-{MAX_ID} characters of letters, digits and _ . : -; got {brief(value, 80)}")
    return value


def check_participant_id(value: Any, what: str = "participant id") -> str:
    """A participant id: an id as `check_id` allows, but never the reserved actor SYSTEM."""
    check_id(value, what)
    if value == SYSTEM:
        raise ValidationError(f"{what} {SYSTEM!r} is reserved for the room itself; choose another")
    return value


def check_text(value: Any, what: str, limit: int, *, allow_empty: bool = False, multiline: bool = False) -> str:
    """Text a person reads: at most `limit` characters, valid Unicode, no control characters
    (tab and newline only where `multiline`)."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be text; got {brief(value, 40) if value is None else type(value).__name__}")
    if len(value) > limit:
        raise ValidationError(f"{what} must be at most {limit} characters; got {len(value)}")
    if not allow_empty and not value.strip():
        raise ValidationError(f"{what} must not be empty")
    bad = (_BAD_TEXT if multiline else _BAD_LINE).search(value)
    if bad is not None:
        c = bad.group()
        if "\ud800" <= c <= "\udfff":
            raise ValidationError(f"{what} must be valid Unicode text; it holds a lone surrogate U+{ord(c):04X}")
        allowed = " (tab and newline are allowed)" if multiline else ""
        raise ValidationError(f"{what} must not contain control characters{allowed}; found U+{ord(c):04X}")
    return value


def check_json(value: Any, what: str, *, max_depth: int = MAX_JSON_DEPTH, max_nodes: int = MAX_JSON_NODES) -> None:
    """Refuse anything that is not plain JSON the CRDT and every client can hold.

    Objects with text keys (whole-number keys are allowed; JSON turns them into text),
    lists, text without lone surrogates or control characters (tab, newline and carriage
    return are allowed), finite numbers, whole numbers within ±2**53, true/false/null;
    at most `max_depth` levels and `max_nodes` values. Walks without recursion, so
    hostile nesting cannot exhaust the stack.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, what)]
    nodes = 0
    while stack:
        v, depth, where = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise ValidationError(f"{what} holds more than {max_nodes} values")
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, int):
            if not -MAX_INT <= v <= MAX_INT:
                raise ValidationError(f"{where}: whole numbers must be within ±2**53; got {brief(v)}")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValidationError(f"{where}: numbers must be finite (plain JSON has no NaN or Infinity); got {v}")
        elif isinstance(v, str):
            _check_json_text(v, where)
        elif isinstance(v, Mapping | list | tuple):
            if depth >= max_depth:
                raise ValidationError(f"{what} is nested more than {max_depth} levels deep")
            if len(v) > max_nodes:
                raise ValidationError(f"{what} holds more than {max_nodes} values")
            if isinstance(v, Mapping):
                for k, item in v.items():
                    if isinstance(k, bool) or not isinstance(k, str | int):
                        raise ValidationError(f"{where}: object keys must be text; got {brief(k, 40)}")
                    if isinstance(k, int):
                        if not -MAX_INT <= k <= MAX_INT:
                            raise ValidationError(f"{where}: object keys must be text; got {brief(k, 40)}")
                    else:
                        if len(k) > MAX_KEY:
                            raise ValidationError(f"{where}: object keys must be at most {MAX_KEY} characters; got {len(k)}")
                        _check_json_text(k, where)
                    stack.append((item, depth + 1, f"{where}.{brief(k, 40) if not isinstance(k, str) else k[:40]}"))
            else:
                stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(v))
        else:
            raise ValidationError(f"{where} must be plain JSON (objects, lists, text, numbers, true/false/null); got {brief(v, 40)}")


def _check_json_text(v: str, where: str) -> None:
    bad = _BAD_JSON_TEXT.search(v)
    if bad is not None:
        c = bad.group()
        if "\ud800" <= c <= "\udfff":
            raise ValidationError(f"{where}: text must be valid Unicode; it holds a lone surrogate U+{ord(c):04X}")
        raise ValidationError(f"{where}: text must not contain control characters; found U+{ord(c):04X}")


def check_number(value: Any, what: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    bracket = "(" if lo_open else "["
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what} must be a number; got {brief(value, 40)}")
    if isinstance(value, int) and value.bit_length() > 1000:  # float() of it would overflow
        raise ValidationError(f"{what} must be in {bracket}{lo:g}, {hi:g}]; got {brief(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise ValidationError(f"{what} must be finite; got {value}")
    low_ok = v > lo if lo_open else v >= lo
    if not low_ok or v > hi:
        raise ValidationError(f"{what} must be in {bracket}{lo:g}, {hi:g}]; got {v:g}")
    return v


def _vector(value: Any, n: int, what: str, lo: float, hi: float, *, lo_open: bool = False) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or len(value) != n:
        raise ValidationError(f"{what} must be a list of {n} numbers; got {brief(value, 80)}")
    return tuple(check_number(v, f"{what}[{i}]", lo, hi, lo_open=lo_open) for i, v in enumerate(value))


@dataclass(frozen=True, slots=True)
class Transform:
    """Where a panel is in the room (metres, y up, as in Ursina)."""

    position: tuple[float, float, float] = (0.0, 1.5, 2.0)
    """Centre of the panel, each coordinate within ±1000 m."""
    rotation: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    """Orientation as a unit quaternion (w, x, y, z); normalised on input."""
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Scale per axis, each in (0.05, 50]."""

    @classmethod
    def from_dict(cls, data: Any) -> Transform:
        if not isinstance(data, Mapping):
            raise ValidationError(f"transform must be an object with position, rotation, scale; got {brief(data, 80)}")
        unknown = set(data) - {"position", "rotation", "scale"}
        if unknown:
            raise ValidationError(f"transform has unknown fields {field_names(unknown)}; allowed: position, rotation, scale")
        default = cls()
        pos = _vector(data.get("position", default.position), 3, "transform.position", -POSITION_LIMIT, POSITION_LIMIT)
        rot = _vector(data.get("rotation", default.rotation), 4, "transform.rotation", -1e6, 1e6)
        norm = math.sqrt(sum(c * c for c in rot))
        if norm < 1e-6:
            raise ValidationError("transform.rotation must be a non-zero quaternion (w, x, y, z)")
        rot = tuple(c / norm for c in rot)
        scale = _vector(data.get("scale", default.scale), 3, "transform.scale", SCALE_MIN, SCALE_MAX, lo_open=True)
        return cls(pos, rot, scale)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, list[float]]:
        return {"position": list(self.position), "rotation": list(self.rotation), "scale": list(self.scale)}


@dataclass(frozen=True, slots=True)
class PanelContent:
    """What a panel shows: how it was made, and the blobs that hold the result."""

    source: Mapping[str, Any] = field(default_factory=dict)
    """JSON description of the source and parameters (model, layer, analysis, ...), at most 16 KiB."""
    refs: tuple[str, ...] = ()
    """Content references: sha256 hex ids of blobs in the content store."""

    @classmethod
    def from_dict(cls, data: Any) -> PanelContent:
        import json

        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValidationError(f"content must be an object with source and refs; got {brief(data, 80)}")
        unknown = set(data) - {"source", "refs"}
        if unknown:
            raise ValidationError(f"content has unknown fields {field_names(unknown)}; allowed: source, refs")
        source = data.get("source", {})
        if not isinstance(source, Mapping):
            raise ValidationError(f"content.source must be an object; got {brief(source, 40)}")
        check_json(source, "content.source")  # before json.dumps, which recurses and trusts its input
        try:
            encoded = json.dumps(source, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValidationError(f"content.source must be plain JSON without NaN: {exc}") from None
        if len(encoded) > MAX_SOURCE_BYTES:
            raise ValidationError(f"content.source must be at most {MAX_SOURCE_BYTES} bytes as JSON; got {len(encoded)}")
        refs = data.get("refs", [])
        if not isinstance(refs, list | tuple) or len(refs) > MAX_CONTENT_REFS:
            raise ValidationError(f"content.refs must be a list of at most {MAX_CONTENT_REFS} sha256 ids")
        for r in refs:
            if not isinstance(r, str) or not _SHA256_RE.fullmatch(r):
                raise ValidationError(f"content.refs entries must be 64 lowercase hex digits (sha256); got {brief(r, 80)}")
        return cls(json.loads(encoded), tuple(refs))

    def to_dict(self) -> dict[str, Any]:
        return {"source": dict(self.source), "refs": list(self.refs)}


@dataclass(frozen=True, slots=True)
class Panel:
    """A 2D or 3D view placed in the room."""

    id: str
    """Unique within the room."""
    kind: PanelKind
    """What the panel shows."""
    title: str
    """Shown in the title bar; 1-120 characters."""
    transform: Transform
    """Where the panel is."""
    size: tuple[float, float]
    """Width and height in metres before scaling, each in [0.05, 20]."""
    owner: str
    """Participant id of whoever created it (their engine computes its content)."""
    lock_holder: str | None
    """Participant id holding the panel's lock, or None when unlocked."""
    content: PanelContent
    """What it shows."""
    created: float
    """Creation time, seconds since the epoch."""
    updated: float
    """Last change, seconds since the epoch."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "title": self.title,
            "transform": self.transform.to_dict(),
            "size": list(self.size),
            "owner": self.owner,
            "lock_holder": self.lock_holder,
            "content": self.content.to_dict(),
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Panel:
        if not isinstance(data, Mapping):
            raise ValidationError(f"panel must be an object; got {brief(data, 80)}")
        allowed = {"id", "kind", "title", "transform", "size", "owner", "lock_holder", "content", "created", "updated"}
        unknown = set(data) - allowed
        if unknown:
            raise ValidationError(f"panel has unknown fields {field_names(unknown)}; allowed: {', '.join(sorted(allowed))}")
        for key in ("id", "kind", "title"):
            if key not in data:
                raise ValidationError(f"panel is missing {key!r}")
        pid = check_id(data["id"], "panel id")
        lock = data.get("lock_holder")
        return cls(
            id=pid,
            kind=parse_enum(PanelKind, data["kind"], "panel kind"),
            title=check_text(data["title"], "panel title", MAX_TITLE, multiline=True),
            transform=Transform.from_dict(data.get("transform", {})),
            size=check_size(data.get("size", (1.0, 0.75))),
            owner=check_id(data.get("owner", "nobody"), "panel owner"),
            lock_holder=None if lock is None else check_id(lock, "panel lock holder"),
            content=PanelContent.from_dict(data.get("content")),
            created=check_number(data.get("created", 0.0), "panel created", 0, 1e11),
            updated=check_number(data.get("updated", 0.0), "panel updated", 0, 1e11),
        )


def check_size(value: Any) -> tuple[float, float]:
    w, h = _vector(value, 2, "panel size", SIZE_MIN, SIZE_MAX)
    return (w, h)


def check_colour(value: Any) -> str:
    if not isinstance(value, str) or not _COLOUR_RE.fullmatch(value):
        raise ValidationError(f"colour must be '#rrggbb'; got {brief(value, 40)}")
    return value.lower()


@dataclass(frozen=True, slots=True)
class Participant:
    """Someone in the room."""

    id: str
    """Stable id of the participant (survives reconnects)."""
    name: str
    """Display name, 1-64 characters."""
    colour: str
    """Avatar and pointer colour, '#rrggbb'."""
    role: Role
    """What they may do."""
    hand_raised: bool = False
    """Whether they raised their hand (teaching)."""
    muted: bool = False
    """Muted by the host (their voice is not forwarded)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "colour": self.colour,
            "role": self.role.value,
            "hand_raised": self.hand_raised,
            "muted": self.muted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Participant:
        return cls(
            id=check_participant_id(data["id"]),
            name=check_text(data["name"], "participant name", MAX_NAME),
            colour=check_colour(data.get("colour", "#888888")),
            role=parse_enum(Role, data.get("role", "member"), "role"),
            hand_raised=bool(data.get("hand_raised", False)),
            muted=bool(data.get("muted", False)),
        )


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """Room-wide settings."""

    name: str = "Untitled room"
    """Shown to everyone; 1-64 characters."""
    capacity: int = 32
    """Most participants at once, 1-500."""
    layout_locked: bool = False
    """When locked, only host and presenters move, add or remove panels."""
    follow: FollowMode = FollowMode.OFF
    """Whether participants' views follow the presenter's."""
    presenter: str | None = None
    """Participant id whose view is followed, when follow is on."""
    voice: VoiceMode = VoiceMode.AUTO
    """How voice is carried."""
    muted_all: bool = False
    """Everyone but host and presenters muted."""
    recording: bool = False
    """The relay is recording the room (set by the host, or by a relay run with --record); shown to everyone."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "capacity": self.capacity,
            "layout_locked": self.layout_locked,
            "follow": self.follow.value,
            "presenter": self.presenter,
            "voice": self.voice.value,
            "muted_all": self.muted_all,
            "recording": self.recording,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoomSettings:
        if not isinstance(data, Mapping):
            raise ValidationError("settings must be an object")
        allowed = set(cls().to_dict())
        unknown = set(data) - allowed
        if unknown:
            raise ValidationError(f"settings has unknown fields {field_names(unknown)}; allowed: {', '.join(sorted(allowed))}")
        d = cls()
        presenter = data.get("presenter", d.presenter)
        return cls(
            name=check_text(data.get("name", d.name), "room name", MAX_NAME),
            capacity=check_capacity(data.get("capacity", d.capacity)),
            layout_locked=check_bool(data.get("layout_locked", d.layout_locked), "layout_locked"),
            follow=parse_enum(FollowMode, data.get("follow", d.follow.value), "follow mode"),
            presenter=None if presenter is None else check_id(presenter, "presenter"),
            voice=parse_enum(VoiceMode, data.get("voice", d.voice.value), "voice mode"),
            muted_all=check_bool(data.get("muted_all", d.muted_all), "muted_all"),
            recording=check_bool(data.get("recording", d.recording), "recording"),
        )


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{what} must be true or false; got {brief(value, 40)}")
    return value


def check_capacity(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():  # the CRDT stores numbers as floats
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"capacity must be a whole number; got {brief(value, 40)}")
    if not CAPACITY_MIN <= value <= CAPACITY_MAX:
        raise ValidationError(f"capacity must be in [{CAPACITY_MIN}, {CAPACITY_MAX}]; got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Room:
    """A snapshot of a room's whole state."""

    id: str
    """Room id (unique per relay / store)."""
    settings: RoomSettings
    """Room-wide settings."""
    panels: Mapping[str, Panel]
    """Panels by id."""
    participants: Mapping[str, Participant]
    """Participants by id (those who joined and did not leave)."""

    def with_settings(self, **changes: Any) -> Room:
        return replace(self, settings=replace(self.settings, **changes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "settings": self.settings.to_dict(),
            "panels": {k: p.to_dict() for k, p in sorted(self.panels.items())},
            "participants": {k: p.to_dict() for k, p in sorted(self.participants.items())},
        }

    def describe(self) -> str:
        """A short human-readable account of the room (used by the CLI)."""
        s = self.settings
        lines = [
            f"room {self.id!r}: {s.name!r}, capacity {s.capacity}, layout "
            f"{'locked' if s.layout_locked else 'unlocked'}, follow {s.follow.value}, voice {s.voice.value}",
            f"  participants ({len(self.participants)}):",
        ]
        for p in sorted(self.participants.values(), key=lambda p: p.id):
            lines.append(f"    {p.id:<12} {p.name:<20} {p.role.value:<9} {p.colour}")
        lines.append(f"  panels ({len(self.panels)}):")
        for pn in sorted(self.panels.values(), key=lambda p: p.created):
            x, y, z = pn.transform.position
            lock = f" locked by {pn.lock_holder}" if pn.lock_holder else ""
            lines.append(
                f"    {pn.id:<12} {pn.kind.value:<16} {pn.title!r:<28} at ({x:.2f}, {y:.2f}, {z:.2f})"
                f" size {pn.size[0]:.2f}x{pn.size[1]:.2f} owner {pn.owner}{lock}"
            )
        return "\n".join(lines)
