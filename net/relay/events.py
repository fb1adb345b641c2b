"""Events between participants: WebRTC signalling, training streams, steering, summons,
a shared replay's timeline.

The relay checks the sender's role and the payload's size, then forwards: "signal" and
"steer" to one participant, "stream", "summon" and "watch" to the room ("watch" only
from a host or presenter, its fields checked by `deeproom.net.recording.watch`). The latest "stream"
message per (panel, channel) is kept for late joiners.
"""

from __future__ import annotations

from typing import Any

import socketio

from deeproom.errors import NotFound, PermissionDenied
from deeproom.net import protocol as P
from deeproom.net.errors import ProtocolError
from deeproom.net.recording import hooks as recording_hooks
from deeproom.net.recording.watch import parse_watch
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import LiveRoom, Session
from deeproom.state import Role, check_participant_id

MEMBER_UP = (Role.HOST, Role.PRESENTER, Role.MEMBER)
RUNS_ROOM = (Role.HOST, Role.PRESENTER)
MAX_STREAMS_PER_ROOM = 256
MAX_STREAM_BYTES_PER_ROOM = 8 * 1024 * 1024
"""The latest stream messages kept for late joiners, per room: at most this many bytes (oldest go first)."""


async def forward_event(settings: RelaySettings, sio: socketio.AsyncServer, sess: Session, room: LiveRoom,
                        data: Any) -> dict[str, Any]:
    d = P.require_mapping(data, "event")
    kind = P.require_str(d, "kind", "event kind", 32)
    if kind not in P.EVENT_KINDS:
        raise ProtocolError(f"unknown event kind {kind!r}; allowed: {', '.join(P.EVENT_KINDS)}")
    payload = P.check_payload(d.get("payload"), P.MAX_EVENT_BYTES[kind], kind)
    to = d.get("to")
    pid = sess.participant_id
    assert pid is not None
    role = room.role_of(pid)
    if role is None:
        raise PermissionDenied(f"{pid!r} is not in room {room.id!r}")
    if kind == "voice_segment":  # the sender's own voice, for the room's recording: forwarded to nobody
        from deeproom.net.recording.voice import take_segment

        return await take_segment(settings, sess, room, payload)
    message = {"kind": kind, "sender": pid, "payload": payload}
    if kind in ("signal", "steer"):
        target = check_participant_id(to, "event target (participant id)")
        if kind == "steer" and role not in MEMBER_UP:
            raise PermissionDenied("viewers cannot steer training; members, presenters and hosts can")
        if target not in room.doc.snapshot().participants:
            raise NotFound(f"no participant {target!r} in room {room.id!r}")
        await sio.emit("event", message, room=f"p:{room.id}:{target}")
    elif kind == "stream":
        if role not in MEMBER_UP:
            raise PermissionDenied("viewers cannot stream into panels; members, presenters and hosts can")
        panel, channel = payload.get("panel_id"), payload.get("channel", "")
        if isinstance(panel, str) and isinstance(channel, str):
            k = (panel[:128], channel[:128])
            old = room.streams.pop(k, None)
            if old is not None:
                room.stream_bytes -= P.payload_size(old["payload"])
            room.streams[k] = message
            room.stream_bytes += P.payload_size(payload)
            while len(room.streams) > MAX_STREAMS_PER_ROOM or room.stream_bytes > MAX_STREAM_BYTES_PER_ROOM:
                _, dropped = room.streams.popitem(last=False)
                room.stream_bytes -= P.payload_size(dropped["payload"])
        await sio.emit("event", message, room=room.id, skip_sid=sess.sid)
    elif kind == "watch":
        if role not in RUNS_ROOM:
            raise PermissionDenied(f"only the host or a presenter drives a shared replay; {pid!r} is {role.value} "
                                   "(the host hands control by making someone presenter)")
        parse_watch(payload)
        await sio.emit("event", message, room=room.id, skip_sid=sess.sid)
        return {"ok": True}
    else:  # summon
        if role not in RUNS_ROOM:
            raise PermissionDenied(f"only host or presenter may summon; {pid!r} is {role.value}")
        await sio.emit("event", message, room=room.id, skip_sid=sess.sid)
    recording_hooks.on_event(room, kind, pid, payload)
    return {"ok": True}
