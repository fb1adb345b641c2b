"""Hostile layout files, stored layouts, content blobs, settings and blob uploads.

Each is refused with a clear reason (a DeepRoomError naming the problem) and leaves the
store as it was; nothing raises RecursionError, OverflowError or a pycrdt panic.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.config import Config
from deeproom.content import decode_content, encode_content
from deeproom.demo_room import build_demo_room
from deeproom.errors import LayoutFileError, ValidationError
from deeproom.layout import Layout, dumps_layout, layout_of, loads_layout, read_layout_file
from deeproom.state import Panel
from deeproom.storage import BlobStore, BlobTooLarge, Store, sha256_hex


def good_layout() -> dict[str, Any]:
    return json.loads(dumps_layout(layout_of(build_demo_room().snapshot())))


def with_panel_field(path: list[Any], value: Any) -> dict[str, Any]:
    data = good_layout()
    target = data["panels"][0]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


HOSTILE_LAYOUTS = {
    "deep nesting": '{"format": "deeproom-layout", "version": 2, "panels": [' + "[" * 100_000 + "]" * 100_000 + "]}",
    "deep source": json.dumps(with_panel_field(["content", "source", "x"], json.loads("[" * 40 + "]" * 40))),
    "400-digit number": json.dumps(with_panel_field(["transform", "position"], [int("9" * 400), 0, 0])),
    "400-digit created": json.dumps(with_panel_field(["created"], int("9" * 400))),
    "5000-digit number": json.dumps(good_layout()).replace('"version": 2', '"version": ' + "9" * 5000),
    "lone surrogate title": json.dumps(with_panel_field(["title"], "\ud800")),
    "lone surrogate source": json.dumps(with_panel_field(["content", "source", "k"], "a\udc00")),
    "lone surrogate key": json.dumps(with_panel_field(["content", "source"], {"\ud800": 1})),
    "NUL in title": json.dumps(with_panel_field(["title"], "a\x00b")),
    "id with newline": json.dumps(with_panel_field(["id"], "metrics\n")),
    "v1 huge angle": json.dumps({"format": "deeproom-layout", "version": 1, "panels": [
        {"id": "a", "kind": "note", "title": "t", "transform": {"rotation": [10**400, 0, 0]}}]}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_LAYOUTS))
def test_hostile_layout_files_are_refused_with_a_reason(tmp_path: Path, name: str) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(HOSTILE_LAYOUTS[name], encoding="utf-8", errors="surrogatepass")
    with pytest.raises(LayoutFileError) as info:
        read_layout_file(path)
    assert str(path) in str(info.value) and len(str(info.value)) < 600


def test_oversized_text_is_refused_before_parsing() -> None:
    with pytest.raises(LayoutFileError, match="at most"):
        loads_layout(" " * (32 * 1024 * 1024 + 1))


def test_layout_store_never_holds_what_fails_to_load(tmp_path: Path) -> None:
    """A lone surrogate used to save (json escapes it) and then crash `layout load`."""
    good = layout_of(build_demo_room().snapshot())
    bad_panel = Panel(**{**{f: getattr(good.panels[0], f) for f in Panel.__slots__}, "title": "\ud800"})  # type: ignore[arg-type]
    with Store(tmp_path / "db.sqlite3") as store:
        store.save_layout("r", "ok", good)
        for bad in (Layout("\ud800", False, good.panels), Layout("fine", False, (bad_panel,))):
            with pytest.raises(ValidationError):
                store.save_layout("r", "ok", bad)
        with pytest.raises(ValidationError):
            store.save_layout("r", "name\ud800", good)
        assert [(i.name, i.version) for i in store.list_layouts("r")] == [("ok", 1)]
        assert store.load_layout("r", "ok") == good


def test_cli_layout_import_of_a_hostile_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(HOSTILE_LAYOUTS["deep nesting"])
    proc = subprocess.run(
        [sys.executable, "-m", "deeproom.cli", "--data-dir", str(tmp_path / "data"), "layout", "import", str(path), "r", "x"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and "nested" in proc.stderr and "Traceback" not in proc.stderr


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEEPROOM_BLOB_MAX_MB": "abc"}, "DEEPROOM_BLOB_MAX_MB must be a number"),
        ({"DEEPROOM_BLOB_MAX_MB": "nan"}, "DEEPROOM_BLOB_MAX_MB"),
        ({"DEEPROOM_BLOB_MAX_MB": "-5"}, "DEEPROOM_BLOB_MAX_MB"),
        ({"DEEPROOM_BLOB_MAX_MB": "1e400"}, "DEEPROOM_BLOB_MAX_MB"),
        ({"DEEPROOM_SERVER": "not a url"}, "DEEPROOM_SERVER must be a relay URL"),
        ({"DEEPROOM_DATA_DIR": "a\x00b"}, "DEEPROOM_DATA_DIR"),
    ],
)
def test_malformed_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Config.from_env(env)


def test_good_settings_are_read() -> None:
    cfg = Config.from_env({"DEEPROOM_BLOB_MAX_MB": "1.5", "DEEPROOM_SERVER": "http://127.0.0.1:9", "DEEPROOM_DATA_DIR": "/tmp/x"})
    assert cfg.blob_max_bytes == int(1.5 * 2**20) and cfg.server == "http://127.0.0.1:9" and cfg.data_dir == Path("/tmp/x")


def test_cli_reports_a_bad_setting_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "DEEPROOM_BLOB_MAX_MB": "abc", "DEEPROOM_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "deeproom.cli", "room", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "DEEPROOM_BLOB_MAX_MB must be a number" in proc.stderr and "Traceback" not in proc.stderr


# --- content blobs -------------------------------------------------------------------------


def _blob(header: bytes, body: bytes = b"") -> bytes:
    return b"DRB1" + struct.pack("<I", len(header)) + header + body


@pytest.mark.parametrize(
    "header",
    [
        b'{"meta": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b'}, "arrays": []}',
        b'{"meta": {"a": "\\ud800"}, "arrays": []}',
        b'{"meta": {"a": ' + b"9" * 400 + b'}, "arrays": []}',
        b'{"meta": {"a": ' + b"9" * 5000 + b'}, "arrays": []}',
        b'{"meta": {"a": NaN}, "arrays": []}',
        b'{"meta": {}, "arrays": [{"name": "x\\u0000", "dtype": "uint8", "shape": [1], "offset": 0, "nbytes": 1}]}',
        b'{"meta": {}, "arrays": [{"name": "x", "dtype": "uint8", "shape": [' + b"9" * 400 + b'], "offset": 0, "nbytes": 1}]}',
        b'{"meta": {}, "arrays": [{"name": "x", "dtype": ["uint8"], "shape": [1], "offset": 0, "nbytes": 1}]}',
    ],
)
def test_hostile_blob_headers_are_refused(header: bytes) -> None:
    with pytest.raises(ValidationError):
        decode_content(_blob(header, b"\x00" * 8))


def test_meta_that_would_not_decode_is_refused_on_encode() -> None:
    with pytest.raises(ValidationError, match="surrogate"):
        encode_content({"title": "\ud800"})
    meta, arrays = decode_content(encode_content({"title": "ok"}, {"x": np.arange(3, dtype=np.int32)}))
    assert meta == {"title": "ok"} and arrays["x"].tolist() == [0, 1, 2]


# --- blob uploads ----------------------------------------------------------------------------


def test_uploads_stream_to_disk_and_reserve_their_size(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs", max_blob_bytes=1 << 20, max_total_bytes=(1 << 20) + 1000)
    data = os.urandom(1 << 20)
    up = blobs.begin_upload(sha256_hex(data), len(data))
    assert blobs.reserved_bytes() == len(data)
    with pytest.raises(BlobTooLarge, match="reserved by uploads in progress"):
        blobs.begin_upload("2" * 64, 2000)  # the cap counts what is on its way
    for i in range(0, len(data), 65536):
        up.write(data[i : i + 65536])
    temporaries = list((tmp_path / "blobs").glob(".tmp-*"))
    assert len(temporaries) == 1 and temporaries[0].stat().st_size == len(data)  # on disk, not in memory
    assert not blobs.has(up.blob_id) and blobs.total_bytes() == 0
    assert up.commit() == sha256_hex(data)
    assert blobs.reserved_bytes() == 0 and blobs.total_bytes() == len(data) and blobs.get(up.blob_id) == data
    assert not list((tmp_path / "blobs").glob(".tmp-*"))
    up.abort()  # after commit: nothing happens
    assert blobs.get(up.blob_id) == data


def test_an_aborted_or_lying_upload_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    up = blobs.begin_upload("3" * 64, 10)
    up.write(b"0123456789")
    with pytest.raises(ValidationError, match="does not match"):
        up.commit()
    up2 = blobs.begin_upload("4" * 64, 10)
    up2.write(b"01234")
    up2.abort()
    up2.abort()
    with pytest.raises(ValidationError):
        up2.write(b"56789")
    up3 = blobs.begin_upload("5" * 64, 10)
    del up3  # dropped without abort: the finalizer releases it
    assert blobs.reserved_bytes() == 0
    assert not list((tmp_path / "blobs").rglob(".tmp-*")) and blobs.ids() == []


KILLED_UPLOADER = textwrap.dedent(
    """
    import sys, os
    from deeproom.storage import BlobStore
    blobs = BlobStore(sys.argv[1])
    up = blobs.begin_upload("6" * 64, 1 << 20)
    up.write(os.urandom(300_000))
    print("writing", flush=True)
    sys.stdin.read()
    """
)


def test_an_orphaned_temporary_is_removed_on_open_and_never_counted(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    kept = BlobStore(root)
    kept.put(b"kept")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_UPLOADER, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        live = BlobStore(root)  # the writer still holds its lock: its file is left alone
        assert live.removed_temporaries == 0 and len(list(root.glob(".tmp-*"))) == 1
        assert live.total_bytes() == 4
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.05)
    reopened = BlobStore(root)
    assert reopened.removed_temporaries == 1 and not list(root.glob(".tmp-*"))
    assert reopened.total_bytes() == 4 and reopened.ids() == [sha256_hex(b"kept")]
