"""Hostile model files: each is a genuine file made here with torch or onnx, then altered the
way an attacker would. Opening one must raise ModelLoadError, run nothing (the payloads
touch a marker file) and allocate little."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deeproom.models.errors import ModelLoadError, UnsafeModelError
from deeproom.models.loading import describe_export_layers, describe_layers, load_model
from deeproom.models.zoo import DigitsCNN

ROOT = Path(__file__).resolve().parents[2]
X = torch.rand(2, 1, 8, 8)


class _Touch:
    """Unpickling this runs `touch marker` — what the attack files carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _rewrite(src: Path, dst: Path, changes: dict[str, bytes | Callable[[bytes], bytes]],
             add: dict[str, bytes] | None = None) -> Path:
    """Copy a zip archive, replacing members whose name ends with a key of `changes`."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        prefix = zi.namelist()[0].split("/")[0]
        for info in zi.infolist():
            data = zi.read(info)
            for suffix, new in changes.items():
                if info.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zo.writestr(info, data)
        for name, data in (add or {}).items():
            zo.writestr(f"{prefix}/{name}", data)
    return dst


class _Const(torch.nn.Module):
    """A model with a tensor constant (lifted by torch.export into data/constants/)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.full((10,), 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * self.scale


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("genuine")
    torch.manual_seed(0)
    cnn = DigitsCNN().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(cnn, (X,)), d / "m.pt2")
        torch.export.save(torch.export.export(_Const(), (X,)), d / "const.pt2")
        torch.jit.save(torch.jit.script(cnn), d / "m.ts")
        dyn = torch.export.export(cnn, (X,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
        torch.export.save(dyn, d / "dyn.pt2")
    torch.save(cnn.state_dict(), d / "m.pth")
    return {"pt2": d / "m.pt2", "dyn": d / "dyn.pt2", "const": d / "const.pt2", "ts": d / "m.ts", "pth": d / "m.pth", "dir": d}


def _attempt(load: Callable[[], object]) -> None:
    """Let torch itself open an attack file (to show the probe is live); its errors do not matter."""
    try:
        load()
    except Exception:
        pass


def _refused(path: Path | bytes, *needles: str, kind: type[ModelLoadError] = ModelLoadError) -> str:
    with pytest.raises(kind) as err:
        load_model(path)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# --- torch.export archives ---------------------------------------------------------------------


def test_genuine_programs_still_load_and_run(genuine: dict[str, Path]) -> None:
    loaded = load_model(genuine["pt2"])
    assert loaded.kind == "export" and loaded.input_shape == (1, 1, 8, 8)
    torch.manual_seed(0)
    ref = DigitsCNN().eval()
    with torch.no_grad():
        assert torch.allclose(loaded.module(X), ref(X), atol=1e-5)
    rows = {r.name: r for r in describe_export_layers(loaded)}
    assert rows["conv1"].type == "Conv2d" and rows["conv1"].params == 16 * 9 + 16
    assert rows["conv1"].output_shape == (2, 16, 8, 8) and rows["relu3"].output_shape == (2, 64)  # as exported
    # a dynamic batch: symbolic sizes in the program (expressions the checks must let through)
    assert "expr_str" in zipfile.ZipFile(genuine["dyn"]).read("dyn/models/model.json").decode()
    dyn = load_model(genuine["dyn"])
    with torch.no_grad():
        assert torch.allclose(dyn.module(torch.cat([X, X, X])), ref(torch.cat([X, X, X])), atol=1e-5)
    const = load_model(genuine["const"])
    assert torch.equal(const.module(X), X.flatten(1)[:, :10] * 2)


def test_sample_inputs_that_run_code_are_refused(genuine: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _rewrite(genuine["pt2"], tmp_path / "evil.pt2",
                    {"data/sample_inputs/model.pt": _saved(((_Touch(marker),), {}))})
    # the probe is live: torch itself runs it
    _attempt(lambda: torch.export.load(evil))
    assert marker.exists()
    marker.unlink()
    msg = _refused(evil, "data/sample_inputs/model.pt", "would run code", "posix.system", kind=UnsafeModelError)
    assert str(evil) in msg
    assert not marker.exists()


def test_pickled_weights_and_constants_that_run_code_are_refused(genuine: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    def use_pickle(first_only: bool) -> Callable[[bytes], bytes]:
        def change(data: bytes) -> bytes:
            cfg = json.loads(data)
            for key in list(cfg["config"])[:1] if first_only else cfg["config"]:
                cfg["config"][key]["use_pickle"] = True
            return json.dumps(cfg).encode()
        return change

    weights = _rewrite(genuine["pt2"], tmp_path / "w.pt2", {"model_weights_config.json": use_pickle(True),
                                                            "data/weights/weight_0": _saved(_Touch(marker))})
    _refused(weights, "data/weights/weight_0", "posix.system", kind=UnsafeModelError)
    consts = _rewrite(genuine["const"], tmp_path / "c.pt2", {"model_constants_config.json": use_pickle(False),
                                                             "data/constants/tensor_0": _saved(_Touch(marker))})
    _refused(consts, "data/constants/tensor_0", "posix.system", kind=UnsafeModelError)
    # an empty weight member that declares a 3.6 GB tensor (torch would fill it with zeros)
    def huge(data: bytes) -> bytes:
        cfg = json.loads(data)
        meta = next(iter(cfg["config"].values()))
        meta["tensor_meta"]["sizes"] = [{"as_int": 30_000}, {"as_int": 30_000}]
        return json.dumps(cfg).encode()

    empty = _rewrite(genuine["pt2"], tmp_path / "e.pt2", {"model_weights_config.json": huge,
                                                          "data/weights/weight_0": b""})
    _refused(empty, "data/weights/weight_0", "900000000 elements")
    # a genuine tensor pickled the same way is fine
    ok = _rewrite(genuine["const"], tmp_path / "ok.pt2", {"model_constants_config.json": use_pickle(False),
                                                          "data/constants/tensor_0": _saved(torch.full((10,), 2.0))})
    assert torch.equal(load_model(ok).module(X), X.flatten(1)[:, :10] * 2)
    assert not marker.exists()


def test_custom_objects_compiled_code_and_legacy_pickles_are_refused(genuine: dict[str, Path], tmp_path: Path) -> None:
    def rename(data: bytes) -> bytes:
        return data.replace(b'"tensor_0"', b'"opaque_obj_0"')

    opaque = _rewrite(genuine["const"], tmp_path / "o.pt2", {"model_constants_config.json": rename},
                      add={"data/constants/opaque_obj_0": b"cos\nsystem\n(S'true'\ntR."})
    _refused(opaque, "opaque_obj_0", "would run code", kind=UnsafeModelError)
    aoti = _rewrite(genuine["pt2"], tmp_path / "a.pt2", {}, add={"data/aotinductor/model/model.so": b"\x7fELF"})
    _refused(aoti, "data/aotinductor/model/model.so", "compiled code", kind=UnsafeModelError)
    legacy = _rewrite(genuine["pt2"], tmp_path / "l.pt2", {}, add={"data/weights/model.pt": _saved({})})
    _refused(legacy, "data/weights/model.pt", kind=UnsafeModelError)
    other = _rewrite(genuine["pt2"], tmp_path / "x.pt2", {}, add={"data/sample_inputs/extra.pkl": b"x"})
    _refused(other, "unexpected member", "extra.pkl")


def _edit_program(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:  # type: ignore[type-arg]
    def change(data: bytes) -> bytes:
        prog = json.loads(data)
        edit(prog)
        return json.dumps(prog).encode()
    return _rewrite(src, dst, {"models/model.json": change})


def test_program_strings_that_python_would_evaluate_are_refused(genuine: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"Integer(__import__('os').system('touch {marker}'))"

    def sym(prog: dict) -> None:  # type: ignore[type-arg]
        values = prog["graph_module"]["graph"]["tensor_values"]
        first = next(iter(values.values()))
        first["sizes"][0] = {"as_expr": {"expr_str": payload, "hint": {"as_int": 16}}}

    evil = _edit_program(genuine["pt2"], tmp_path / "sym.pt2", sym)
    _attempt(lambda: torch.export.load(evil))  # torch fails, but only after sympify ran the payload
    assert marker.exists()
    marker.unlink()
    _refused(evil, "symbolic expression", "'__import__'", kind=UnsafeModelError)
    # code, and arithmetic sympy would never finish evaluating
    for expr in ("().__class__", "exec(chr(49))", "s0.__class__", "Symbol('s0', positive=True)+lambda",
                 "10**10**10", "Pow(Integer(10), Pow(Integer(10), Integer(10)))", "factorial2(Integer(99999999))",
                 "Pow(Integer(10), Integer(10000000000))"):
        def other(prog: dict, expr: str = expr) -> None:  # type: ignore[type-arg]
            next(iter(prog["graph_module"]["graph"]["tensor_values"].values()))["sizes"][0] = {
                "as_expr": {"expr_str": expr, "hint": {"as_int": 16}}}
        _refused(_edit_program(genuine["pt2"], tmp_path / "o.pt2", other), "symbolic expression")

    # a graph input name torch.fx writes into `def forward(self, <name>, ...)` and executes
    injected = "x=exec(\"import os;os.system('touch " + str(marker) + "')\")"
    evil_name = _rewrite(genuine["pt2"], tmp_path / "name.pt2",
                         {"models/model.json": lambda d: d.replace(b'"x"', json.dumps(injected).encode())})
    _attempt(lambda: torch.export.load(evil_name).module())
    assert marker.exists()
    marker.unlink()
    _refused(evil_name, "is not a plain name", kind=UnsafeModelError)

    def carriage_return(prog: dict) -> None:  # type: ignore[type-arg]
        node = prog["graph_module"]["graph"]["nodes"][0]
        node["metadata"]["stack_trace"] = 'File "m.py", line 1, in f\n  x\rimport os'

    _refused(_edit_program(genuine["pt2"], tmp_path / "cr.pt2", carriage_return), "carriage return",
             kind=UnsafeModelError)

    guards = _edit_program(genuine["pt2"], tmp_path / "g.pt2",
                           lambda p: p.update(guards_code=[f"__import__('os').system('touch {marker}')"]))
    _refused(guards, "guards_code", kind=UnsafeModelError)

    def target(prog: dict) -> None:  # type: ignore[type-arg]
        node = next(n for n in prog["graph_module"]["graph"]["nodes"] if "relu" in n["target"])
        node["target"] = "torch.serialization.os.system"

    _refused(_edit_program(genuine["pt2"], tmp_path / "t.pt2", target), "torch.serialization.os.system",
             kind=UnsafeModelError)

    def from_file(prog: dict) -> None:  # type: ignore[type-arg]
        node = next(n for n in prog["graph_module"]["graph"]["nodes"] if "relu" in n["target"])
        node["target"] = "torch.ops.aten.from_file.default"

    _refused(_edit_program(genuine["pt2"], tmp_path / "f.pt2", from_file), "from_file", kind=UnsafeModelError)

    def operator_argument(prog: dict) -> None:  # type: ignore[type-arg]
        node = next(n for n in prog["graph_module"]["graph"]["nodes"] if "relu" in n["target"])
        node["inputs"].append({"name": "fn", "arg": {"as_operator": "torch.serialization.os.system"}, "kind": 1})

    _refused(_edit_program(genuine["pt2"], tmp_path / "op.pt2", operator_argument), "os.system",
             kind=UnsafeModelError)
    assert not marker.exists()


# --- zip structure -----------------------------------------------------------------------------


def _set_declared_size(data: bytes, name: str, size: int) -> bytes:
    """Make one member's headers declare `size` bytes uncompressed (a bomb's headers)."""
    out = bytearray(data)
    raw = name.encode()
    local = out.find(b"PK\x03\x04")
    while local != -1:
        n = struct.unpack("<H", out[local + 26:local + 28])[0]
        if bytes(out[local + 30:local + 30 + n]) == raw:
            struct.pack_into("<I", out, local + 22, size)
        local = out.find(b"PK\x03\x04", local + 4)
    central = out.find(b"PK\x01\x02")
    while central != -1:
        n = struct.unpack("<H", out[central + 28:central + 30])[0]
        if bytes(out[central + 46:central + 46 + n]) == raw:
            struct.pack_into("<I", out, central + 24, size)
        central = out.find(b"PK\x01\x02", central + 4)
    return bytes(out)


def _peak_rss_mb(code: str) -> tuple[int, str]:
    """Run `code` in a fresh interpreter; its peak RSS in MB and its output. (VmHWM, the peak of
    this program's own memory: `ru_maxrss` would also count the forking pytest's RSS, which Linux
    carries across exec.)"""
    script = code + ("\nimport re; print('RSS', int(re.search(r'VmHWM:\\s+(\\d+)', "
                     "open('/proc/self/status').read()).group(1)) // 1024)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = int(out.stdout.rsplit("RSS", 1)[1])
    return rss, out.stdout


def test_decompression_bombs_are_refused_before_decompressing(genuine: dict[str, Path], tmp_path: Path) -> None:
    # a checkpoint whose tensor member inflates 300 MB of zeros out of a few hundred KB
    with zipfile.ZipFile(genuine["pth"]) as z:
        prefix = z.namelist()[0].split("/")[0]
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(genuine["pth"]) as zi, zipfile.ZipFile(bomb, "w") as zo:
        for info in zi.infolist():
            zo.writestr(info, zi.read(info))
        zo.writestr(f"{prefix}/data/99", bytes(300 << 20), compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 2 << 20
    _refused(bomb, "decompression bomb", f"{prefix}/data/99")
    # headers that lie: 3.3 GB declared for a tiny deflated member (what miniz would allocate)
    liar = tmp_path / "liar.pt2"
    with zipfile.ZipFile(genuine["pt2"]) as zi, zipfile.ZipFile(liar, "w") as zo:
        for info in zi.infolist():
            zo.writestr(info, zi.read(info), compress_type=zipfile.ZIP_DEFLATED)
    liar.write_bytes(_set_declared_size(liar.read_bytes(), "m/data/sample_inputs/model.pt", 3_300_000_000))
    rss, out = _peak_rss_mb(
        "from deeproom.models.loading import load_model\n"
        "from deeproom.models.errors import ModelLoadError\n"
        f"try:\n    load_model({str(liar)!r})\nexcept ModelLoadError as e:\n    print('REFUSED', e)\n")
    assert "REFUSED" in out and "m/data/sample_inputs/model.pt" in out, out
    assert rss < 1500, rss  # torch alone takes a few hundred MB; the member would be 3,300
    # the same lie inside the nested torch.save archive of the sample inputs
    inner = _set_declared_size(_saved(((torch.zeros(2),), {})), "archive/data/0", 3_300_000_000)
    _refused(_rewrite(genuine["pt2"], tmp_path / "nested.pt2", {"data/sample_inputs/model.pt": inner}),
             "archive/data/0")


def test_archives_with_too_many_members_or_path_tricks_are_refused(genuine: dict[str, Path], tmp_path: Path) -> None:
    many = tmp_path / "many.pth"
    with zipfile.ZipFile(genuine["pth"]) as zi, zipfile.ZipFile(many, "w") as zo:
        for info in zi.infolist():
            zo.writestr(info, zi.read(info))
        for i in range(10_001):
            zo.writestr(f"archive/junk/{i}", b"")
    _refused(many, "10", "at most 10000")
    for bad in ("../escape", "/abs/data.pkl", "archive\\..\\x", "archive/../../x"):
        path = tmp_path / "trick.pth"
        _rewrite(genuine["pth"], path, {}, add={})
        with zipfile.ZipFile(path, "a") as z:
            z.writestr(zipfile.ZipInfo(bad), b"x")
        _refused(path, "unsafe path")
    dup = tmp_path / "dup.pth"
    with zipfile.ZipFile(genuine["pth"]) as zi, zipfile.ZipFile(dup, "w") as zo, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in zi.infolist():
            zo.writestr(info, zi.read(info))
        zo.writestr(zi.infolist()[0].filename, _saved(_Touch(tmp_path / "pwned")))
    _refused(dup, "appears twice")
    # torch's reader finds names ignoring case: an upper-case twin could be read instead of the checked one
    twin = _rewrite(genuine["pt2"], tmp_path / "twin.pt2", {},
                    add={"data/sample_inputs/MODEL.pt": _saved(((_Touch(tmp_path / "pwned"),), {}))})
    _refused(twin, "appears twice", "MODEL.pt")
    # an end record that counts fewer members than the directory holds (the two readers would differ)
    data = bytearray(genuine["pth"].read_bytes())
    struct.pack_into("<HH", data, len(data) - 14, 2, 2)
    miscount = tmp_path / "miscount.pth"
    miscount.write_bytes(bytes(data))
    _refused(miscount, "declares 2 members")
    # a comment after the end record could hide a second directory from one reader
    commented = tmp_path / "comment.pth"
    commented.write_bytes(genuine["pth"].read_bytes()[:-2] + struct.pack("<H", 4) + b"PK\x05\x06")
    _refused(commented, "zip")
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_damaged_files_are_refused(genuine: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("pt2", "ts", "pth"):
        data = genuine[kind].read_bytes()
        for cut in (30, len(data) // 3, len(data) // 2, len(data) - 1):
            path = tmp_path / f"cut.{kind}"
            path.write_bytes(data[:cut])
            _refused(path, str(path))
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        path = tmp_path / f"flip.{kind}"
        path.write_bytes(bytes(flipped))
        try:
            load_model(path)  # a flipped byte in raw tensor data is not detectable by torch
        except ModelLoadError as exc:
            assert "\n" not in str(exc)


# --- TorchScript --------------------------------------------------------------------------------


class _ReadsFiles(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8)
        return x + y.float().sum()


class _WritesOnLoad(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), self.marker)


def test_torchscript_inspect_and_file_touching_code(genuine: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_model(genuine["ts"])
    rows = {r.name: r for r in describe_layers(loaded)}
    assert rows["conv1"].type == "Conv2d" and rows["conv1"].params == 16 * 9 + 16
    assert rows["fc2"].type == "Linear" and rows["fc2"].params == 650
    marker = tmp_path / "written.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_ReadsFiles()), tmp_path / "reads.ts")
        torch.jit.save(torch.jit.script(_WritesOnLoad(str(marker))), tmp_path / "writes.ts")
    assert not marker.exists()
    _refused(tmp_path / "reads.ts", "from_file", kind=UnsafeModelError)
    # the probe is live: torch.jit.load runs __setstate__, which writes the file
    torch.jit.load(tmp_path / "writes.ts")
    assert marker.exists()
    marker.unlink()
    _refused(tmp_path / "writes.ts", "save", kind=UnsafeModelError)
    assert not marker.exists()
    pwned = tmp_path / "pwned"
    for member in ("data.pkl", "constants.pkl"):
        evil = _rewrite(genuine["ts"], tmp_path / "evil.ts", {f"/{member}": pickle.dumps((_Touch(pwned),), protocol=2)})
        _refused(evil, member, "posix.system", kind=UnsafeModelError)
    assert not pwned.exists()


# --- ONNX ---------------------------------------------------------------------------------------


def _relu_model(dims: list[int] | None = None) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    nodes = [helper.make_node("Add", ["x", "w"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims or [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims or [4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _external(model: onnx.ModelProto, location: str, length: int = 16) -> onnx.ModelProto:
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return model


def test_onnx_external_data_stays_beside_the_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.onnx.data").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    good = models / "good.onnx"
    onnx.save(_external(_relu_model(), "m.onnx.data"), good)
    out = load_model(good).module(torch.tensor([-10.0, 0.0, 0.0, 0.0]))
    assert torch.equal(out, torch.tensor([0.0, 1.0, 2.0, 3.0]))

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S" * 16)
    (models / "link.data").symlink_to(secret)
    for location in ("../secret.bin", "../../../../../../etc/passwd", str(secret), "link.data", "sub/../../secret.bin"):
        path = models / "evil.onnx"
        path.write_bytes(_external(_relu_model(), location).SerializeToString())
        msg = _refused(path, str(path), "refused")
        assert "SSSS" not in msg
    # offsets past the end, and sizes that do not match the tensor
    path = models / "long.onnx"
    path.write_bytes(_external(_relu_model(), "m.onnx.data", length=4096).SerializeToString())
    _refused(path, "exceeds")
    # bytes have no folder: external data is refused outright
    _refused(_external(_relu_model(), "m.onnx.data").SerializeToString(), "external file")


def test_onnx_invalid_models_fail_in_one_line(tmp_path: Path) -> None:
    bad = _relu_model()
    bad.graph.node[1].input[0] = "nowhere"
    msg = _refused(bad.SerializeToString(), "invalid ONNX model")
    assert "nowhere" in msg
    shuffled = _relu_model()
    first = onnx.NodeProto()
    first.CopyFrom(shuffled.graph.node[0])
    del shuffled.graph.node[0]
    shuffled.graph.node.append(first)
    _refused(shuffled.SerializeToString(), "invalid ONNX model")
    # 300 nested If subgraphs, encoded by hand (onnx's own helpers stop at protobuf's depth limit)
    graph = helper.make_graph([helper.make_node("Identity", ["c"], ["o"])], "leaf", [],
                              [helper.make_tensor_value_info("o", TensorProto.BOOL, [])]).SerializeToString()
    for i in range(300):
        attr = helper.make_attribute("then_branch", 1.0)
        attr.ClearField("f")
        attr.type = onnx.AttributeProto.GRAPH
        node = helper.make_node("If", ["c"], [f"o{i}"]).SerializeToString() + _field(5, attr.SerializeToString()
                                                                                   + _field(6, graph))
        graph = helper.make_graph([], f"g{i}", [], []).SerializeToString() + _field(1, node)
    model = helper.make_model(helper.make_graph([], "top", [], []), opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "deep.onnx").write_bytes(model.SerializeToString() + _field(7, graph))
    _refused(tmp_path / "deep.onnx", str(tmp_path / "deep.onnx"))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload



def test_onnx_declared_sizes_do_not_allocate(tmp_path: Path) -> None:
    huge = _relu_model()
    w = huge.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([100_000, 100_000])
    _refused(huge.SerializeToString(), "'w'", "10000000000")
    liar = _relu_model()
    liar.graph.initializer[0].dims[0] = 1 << 20  # declares 4 MB, holds 16 bytes
    _refused(liar.SerializeToString(), "holds 16 bytes")
    # an input declared as 1×100000×100000: inspect must not build that example input
    wide = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100_000, 100_000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100_000, 100_000])]),
        opset_imports=[helper.make_opsetid("", 17)])
    loaded = load_model(wide.SerializeToString())
    rows = describe_layers(loaded)
    assert rows and rows[0].output_shape is None
    assert "at most" in loaded.extra["shape_error"]


# --- the command line ---------------------------------------------------------------------------


def test_inspect_command_refuses_without_running_anything(genuine: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _rewrite(genuine["pt2"], tmp_path / "evil.pt2",
                    {"data/sample_inputs/model.pt": _saved(((_Touch(marker),), {}))})
    cli = ROOT / ".venv" / "bin" / "deeproom"
    out = subprocess.run([str(cli), "--data-dir", str(tmp_path / "data"), "inspect", str(evil)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0, out.stdout
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("deeproom: ") and "data/sample_inputs/model.pt" in lines[0]
    assert "would run code" in lines[0]
    assert not marker.exists()
    good = subprocess.run([str(cli), "--data-dir", str(tmp_path / "data"), "inspect", str(genuine["ts"])],
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert "torchscript model, 9 layers, 38,282 parameters" in good.stdout


def test_names_in_a_model_file_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """Layer and tensor names are the file author's: `inspect` prints ESC sequences (clear the
    screen, retitle the window) and direction overrides as visible escapes."""
    x = helper.make_tensor_value_info("x\x1b[31m", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    node = helper.make_node("MatMul", ["x\x1b[31m", "w"], ["y"], name="evil\x1b[2J\x1b]0;pwned\x07\u202ename")
    graph = helper.make_graph([node], "g", [x], [y], [w])
    path = tmp_path / "names.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    out = subprocess.run([sys.executable, "-m", "deeproom.cli", "--data-dir", str(tmp_path / "data"), "inspect",
                          str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert not any(c in out.stdout + out.stderr for c in "\x1b\x07\u202e")
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\u202ename" in out.stdout
