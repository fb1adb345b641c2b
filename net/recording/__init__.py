"""Recording rooms on the relay and sharing recordings.

- `recorder`: `RoomRecorder`, one room's timeline being written (updates, presence chunks,
  events, snapshots, blobs by hash), stopped on a full disk with a notice to the host;
- `hooks`: the single calls the relay's parts make (`on_update`, `on_poses`, `on_event`,
  `on_chapter`), which start and stop recorders from the room's `recording` setting;
- `store`: `RecordingStore`, recordings under a data dir: list, export, import, delete;
- `commands`: `deeproom record ...`, `deeproom replay ...`, `deeproom bench replay`.

The timeline format itself is pure Python: `deeproom.recording`.
"""

from deeproom.net.recording.store import RecordingInfo, RecordingStore

__all__ = ["RecordingInfo", "RecordingStore"]
