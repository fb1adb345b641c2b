"""The relay's parts, one job each (wired together by `deeproom.net.server.RelayServer`).

- `settings`: `RelaySettings`, including the policy for strangers (room creation, quotas);
- `state`: `Session` (a socket) and `LiveRoom` (a room in use);
- `rooms`: `RoomHub`, live rooms: apply, persist, broadcast, merge other nodes;
- `presence`: `Presence`, poses in, one batch per room per tick out;
- `blobs`: `BlobService`, uploads and fetches with per-address quotas;
- `admission`: `Admission`, joins, room creation, invites, kicks, passwords, leaving;
- `events`: forwarding signal/stream/steer/summon;
- `layouts`: `LayoutService`, saved layout versions and loading them into a live room;
- `wire`: `RelaySocketServer`, which lets only the relay's own event names reach a handler.
"""

from deeproom.net.relay.settings import ROOM_CREATION, RelaySettings

__all__ = ["ROOM_CREATION", "RelaySettings"]
