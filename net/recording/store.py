"""Recordings on disk: list, export to one archive file, import, delete.

Layout under a data dir: `recordings/<id>/timeline.drrec`, and `recordings/blobs/<aa>/<rest>`
shared by all recordings, each blob stored once by its sha256: the blobs panels showed and
the voice segments (Ogg Opus) speakers uploaded. An exported recording is one uncompressed
tar (its timeline's presence is compressed already, its voice is Opus): `manifest.json`
first (format name and version, the recording's id, room, duration, blobs, voice
segments), then the timeline, then `blobs/<sha256>`, then `voice/<sha256>`.
Tar is read front to back, so a cut-off archive still yields its manifest and the
whole part of the timeline; the import names what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from deeproom.recording import FORMAT_VERSION, NewerFormat, RecordingError, Timeline, read_timeline
from deeproom.state import is_sha256

ARCHIVE_FORMAT = "deeproom-recording-archive"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True)
class RecordingInfo:
    id: str
    room_id: str
    started_wall: float
    duration: float
    bytes: int
    blobs: int
    chapters: int
    damage: str | None
    ended: str | None
    voice_segments: int = 0
    follows: str | None = None
    """The recording this one continues (a relay node took the room over after the recording node died)."""


@dataclass(frozen=True)
class ImportResult:
    id: str
    damage: list[str]
    """What the archive lacked or held damaged (empty when whole)."""


def check_recording_id(rid: str) -> str:
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        raise RecordingError(f"a recording id is 1-128 letters, digits, '.', '_' or '-'; got {rid!r:.140}")
    return rid


class RecordingStore:
    """The recordings under `root` (a relay's `DATA_DIR/recordings`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, rid: str) -> Path:
        return self.root / check_recording_id(rid)

    def timeline_path(self, rid: str) -> Path:
        p = self.path(rid) / "timeline.drrec"
        if not p.is_file():
            known = ", ".join(i for i in self.ids()[:10]) or "none"
            raise RecordingError(f"no recording {rid!r} in {self.root} (recordings: {known})")
        return p

    def blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha[2:]

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "timeline.drrec").is_file())

    def open(self, rid: str) -> Timeline:
        return read_timeline(self.timeline_path(rid))

    @staticmethod
    def referenced(tl: Timeline) -> set[str]:
        """Every blob a timeline needs: what its panels showed and its voice segments."""
        return set(tl.blobs) | {seg.sha for seg in tl.voice}

    def info(self, rid: str) -> RecordingInfo:
        d = self.path(rid)
        tl = self.open(rid)
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        size += sum(self.blob_path(s).stat().st_size for s in self.referenced(tl) if self.blob_path(s).is_file())
        follows = tl.header.get("follows")
        if not (isinstance(follows, str) and _ID.fullmatch(follows)):
            follows = None  # a header from an imported file: only a well-formed id is shown
        return RecordingInfo(rid, tl.room_id, float(tl.header.get("started_wall", 0.0)), tl.duration, size,
                             len(set(tl.blobs)), len(tl.chapters), tl.damage, tl.ended, len(tl.voice), follows)

    def all(self) -> list[RecordingInfo]:
        out = []
        for rid in self.ids():
            try:
                out.append(self.info(rid))
            except RecordingError as exc:
                out.append(RecordingInfo(rid, "?", 0.0, 0.0, 0, 0, 0, str(exc), None))
        return out

    # --- sharing ---------------------------------------------------------------------------

    def export(self, rid: str, dest: str | Path) -> Path:
        """Write recording `rid` as one archive file at `dest`."""
        tl = self.open(rid)
        d = self.path(rid)
        blobs = [s for s in dict.fromkeys(tl.blobs) if self.blob_path(s).is_file()]
        voice = [s for s in dict.fromkeys(seg.sha for seg in tl.voice) if self.blob_path(s).is_file()]
        manifest = {"format": ARCHIVE_FORMAT, "version": FORMAT_VERSION, "id": rid, "room_id": tl.room_id,
                    "duration": tl.duration, "started_wall": tl.header.get("started_wall"),
                    "timeline_bytes": (d / "timeline.drrec").stat().st_size, "blobs": blobs, "voice": voice}
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".part")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            data = json.dumps(manifest, indent=1).encode()
            ti = tarfile.TarInfo("manifest.json")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
            tar.add(d / "timeline.drrec", "timeline.drrec")
            for sha in blobs:
                tar.add(self.blob_path(sha), f"blobs/{sha}")
            for sha in voice:
                tar.add(self.blob_path(sha), f"voice/{sha}")
        tmp.replace(dest)
        return dest

    def import_(self, src: str | Path, rid: str | None = None) -> ImportResult:
        """Unpack an archive into this store; what is whole is kept, what is damaged is named.

        Raises NewerFormat for an archive of a newer format version, RecordingError when
        not even the manifest and the start of the timeline can be read.
        """
        src = Path(src)
        damage: list[str] = []
        try:
            raw = open(src, "rb")  # noqa: SIM115 (closed below)
            try:
                tar = tarfile.open(fileobj=raw, mode="r:")  # noqa: SIM115 (closed below)
            except BaseException:
                raw.close()
                raise
        except (tarfile.TarError, OSError) as exc:
            raise RecordingError(f"{src} is not a DeepRoom recording archive ({exc})") from None
        manifest: dict[str, Any] | None = None
        target: Path | None = None
        seen: set[str] = set()
        try:
            with raw, tar:
                for member in tar:
                    name = member.name
                    if manifest is None:
                        manifest = self._manifest(src, tar, member)
                        wanted = check_recording_id(rid or str(manifest.get("id", "")))
                        target = self._fresh_dir(wanted)
                        continue
                    assert target is not None
                    if not member.isfile():
                        damage.append(f"{name}: not a file, skipped")
                        continue
                    if name == "timeline.drrec":
                        out = target / "timeline.drrec"
                    elif name.startswith("blobs/") and is_sha256(name[6:]):
                        out = target / f".blob-{name[6:]}"
                    elif name.startswith("voice/") and is_sha256(name[6:]):
                        out = target / f".voice-{name[6:]}"
                    else:
                        damage.append(f"{name}: not part of a recording, skipped")
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        _copy_member(raw, member, out)
                    except (tarfile.TarError, OSError, EOFError) as exc:
                        damage.append(f"{name}: cut off ({exc}); its whole part is kept")
                        seen.add(name)
                        raise _Truncated from None
                    seen.add(name)
                    if name.startswith(("blobs/", "voice/")):
                        sha = name[6:]
                        what = "blob" if name.startswith("blobs/") else "voice segment"
                        if hashlib.sha256(out.read_bytes()).hexdigest() != sha:
                            damage.append(f"{what} {sha}: damaged (its bytes do not hash to its name), left out")
                            out.unlink()
                        else:
                            dst = self.blob_path(sha)
                            dst.parent.mkdir(parents=True, exist_ok=True)
                            out.replace(dst)
        except _Truncated:
            pass
        except (tarfile.TarError, EOFError, OSError) as exc:
            if manifest is None:
                raise RecordingError(f"{src}: the archive's manifest cannot be read ({exc})") from None
            damage.append(f"the archive is cut off or damaged after {', '.join(sorted(seen)) or 'its manifest'} ({exc})")
        if manifest is None or target is None:
            raise RecordingError(f"{src} holds no manifest.json: not a DeepRoom recording archive")
        if not (target / "timeline.drrec").is_file():
            shutil.rmtree(target, ignore_errors=True)
            raise RecordingError(f"{src}: the archive holds no timeline (it is cut off right after its manifest)")
        for sha in manifest.get("blobs", []):
            if f"blobs/{sha}" not in seen:
                damage.append(f"blob {sha}: missing from the archive")
        for sha in manifest.get("voice", []):
            if f"voice/{sha}" not in seen:
                damage.append(f"voice segment {sha}: missing from the archive")
        tl = read_timeline(target / "timeline.drrec")
        if tl.damage:
            damage.append(f"timeline: {tl.damage}")
        return ImportResult(target.name, damage)

    def _manifest(self, src: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
        if member.name != "manifest.json" or not member.isfile() or member.size > MAX_MANIFEST_BYTES:
            raise RecordingError(f"{src}: first member is {member.name!r}, not manifest.json: not a recording archive")
        fh = tar.extractfile(member)
        assert fh is not None
        try:
            manifest = json.loads(fh.read())
        except ValueError as exc:
            raise RecordingError(f"{src}: manifest.json is damaged ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
            raise RecordingError(f"{src}: manifest.json does not describe a {ARCHIVE_FORMAT}")
        version = manifest.get("version")
        if not isinstance(version, int) or version < 1:
            raise RecordingError(f"{src}: manifest.json has no valid format version (got {version!r})")
        if version > FORMAT_VERSION:
            raise NewerFormat(f"{src} is recording format version {version}; this DeepRoom reads up to version "
                              f"{FORMAT_VERSION} (open it with a DeepRoom that reads version {version})")
        for key in ("blobs", "voice"):
            if not isinstance(manifest.get(key, []), list) or not all(
                    is_sha256(s) for s in manifest.get(key, [])):
                raise RecordingError(f"{src}: manifest.json lists {key} that are not sha256 ids")
        return manifest

    def _fresh_dir(self, rid: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target, n = self.root / rid, 1
        while target.exists():
            n += 1
            target = self.root / f"{rid}-{n}"
        target.mkdir()
        return target

    def delete(self, rid: str) -> list[str]:
        """Remove recording `rid` and the blobs (panel content, voice segments) no other recording
        references; returns those blobs."""
        d = self.path(rid)
        if not d.is_dir():
            raise RecordingError(f"no recording {rid!r} in {self.root}")
        mine: set[str] = set()
        try:
            mine = self.referenced(self.open(rid))
        except RecordingError:
            pass
        others: set[str] = set()
        for other in self.ids():
            if other != rid:
                try:
                    others.update(self.referenced(self.open(other)))
                except RecordingError:
                    others.update(mine)  # unreadable: keep every blob it might reference
        shutil.rmtree(d)
        removed = []
        for sha in sorted(mine - others):
            p = self.blob_path(sha)
            if p.is_file():
                p.unlink()
                removed.append(sha)
        return removed


class _Truncated(Exception):
    pass


def _copy_member(raw: BinaryIO, member: tarfile.TarInfo, out: Path) -> None:
    """Copy a member out as far as the file goes (a cut-off member keeps its whole first part)."""
    raw.seek(member.offset_data)
    left = member.size
    with open(out, "wb") as dst:
        while left > 0:
            chunk = raw.read(min(left, 1 << 20))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
    if out.stat().st_size != member.size:
        raise EOFError(f"{out.stat().st_size} of {member.size} bytes")
