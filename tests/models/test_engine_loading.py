"""Loading every kind of model file, and refusing the bad ones with clear errors."""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from onnx import TensorProto, helper

from deeproom.models.errors import (
    LayerNotFoundError,
    ModelLoadError,
    UnsafeModelError,
    UnsupportedOperatorError,
)
from deeproom.models.loading import describe_layers, load_model, resolve_layer
from deeproom.models.zoo import DigitsCNN, TinyResNet


def _export(model: torch.nn.Module, path: Path, opset: int = 17) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=opset)


@pytest.fixture
def cnn() -> DigitsCNN:
    torch.manual_seed(1)
    return DigitsCNN().eval()


def test_every_kind_loads_and_matches(cnn: DigitsCNN, tmp_path: Path) -> None:
    x = torch.rand(3, 1, 8, 8)
    ref = cnn(x)
    _export(cnn, tmp_path / "m.onnx")
    torch.jit.save(torch.jit.script(cnn), tmp_path / "m.ts")
    torch.export.save(torch.export.export(cnn, (x,)), tmp_path / "m.pt2")
    torch.save(cnn.state_dict(), tmp_path / "m.pth")
    torch.save({"state_dict": cnn.state_dict(), "step": 3}, tmp_path / "nested.ckpt")
    kinds = {}
    for name in ("m.onnx", "m.ts", "m.pt2", "m.pth", "nested.ckpt"):
        loaded = load_model(tmp_path / name)
        kinds[name] = loaded.kind
        with torch.no_grad():
            assert torch.allclose(loaded.module(x), ref, atol=1e-5), name
    assert kinds == {"m.onnx": "onnx", "m.ts": "torchscript", "m.pt2": "export", "m.pth": "checkpoint",
                     "nested.ckpt": "checkpoint"}
    assert load_model(tmp_path / "m.onnx").input_shape == (1, 1, 8, 8)
    # the digest identifies weights: same weights → same digest, changed weights → different
    assert load_model(cnn).digest == load_model(tmp_path / "m.pth").digest
    other = DigitsCNN()
    assert load_model(other).digest != load_model(cnn).digest


def test_describe_layers_counts_params_and_shapes(cnn: DigitsCNN, tmp_path: Path) -> None:
    rows = {r.name: r for r in describe_layers(load_model(cnn))}
    assert rows["conv1"].params == 16 * 9 + 16 and rows["conv1"].output_shape == (1, 16, 8, 8)
    assert rows["pool"].output_shape == (1, 32, 4, 4) and rows["fc2"].output_shape == (1, 10)
    _export(cnn, tmp_path / "m.onnx")
    onnx_rows = {r.name: r for r in describe_layers(load_model(tmp_path / "m.onnx"))}
    assert onnx_rows["/conv2/Conv"].params == 32 * 16 * 9 + 32
    assert onnx_rows["/fc2/Gemm"].output_shape == (1, 10)


def test_random_and_truncated_files_are_refused(cnn: DigitsCNN, tmp_path: Path) -> None:
    _export(cnn, tmp_path / "m.onnx")
    torch.save(cnn.state_dict(), tmp_path / "m.pth")
    torch.export.save(torch.export.export(cnn, (torch.zeros(1, 1, 8, 8),)), tmp_path / "m.pt2")
    cases = {
        "random.bin": os.urandom(4096),
        "trunc.onnx": (tmp_path / "m.onnx").read_bytes()[:5000],
        "trunc.pth": (tmp_path / "m.pth").read_bytes()[:5000],
        "trunc.pt2": (tmp_path / "m.pt2").read_bytes()[:5000],
        "empty.onnx": b"",
        "text.onnx": b"hello, this is not a model\n" * 10,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelLoadError) as err:
            load_model(tmp_path / name)
        assert str(tmp_path / name) in str(err.value), name
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_model(tmp_path / "missing.onnx")


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {_Exploit.marker}",))

    marker = ""


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    torch.save({"weight": torch.zeros(2), "payload": _Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeModelError, match="would run code"):
        load_model(tmp_path / "evil.pth")
    # a raw (non-zip) pickle too
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Exploit(), protocol=2))
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "evil.pkl")
    # a whole pickled module needs its class: refused the same way
    torch.save(DigitsCNN(), tmp_path / "module.pth")
    with pytest.raises(UnsafeModelError):
        load_model(tmp_path / "module.pth")
    assert not marker.exists()


def test_checkpoint_that_fits_no_architecture(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(3, 3)}, tmp_path / "odd.pth")
    with pytest.raises(ModelLoadError, match="fits no built-in architecture"):
        load_model(tmp_path / "odd.pth")
    torch.save(TinyResNet().state_dict(), tmp_path / "r.pth")
    assert load_model(tmp_path / "r.pth").extra["architecture"] == "tiny_resnet"
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_model(tmp_path / "r.pth", architecture="nope")


def _model_with(op: str, domain: str = "") -> bytes:
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def test_unsupported_operator_is_named() -> None:
    with pytest.raises(UnsupportedOperatorError, match=r"Unique \(opset 17\)"):
        load_model(_model_with("Unique"))
    with pytest.raises(UnsupportedOperatorError, match=r"com\.acme\.Sparkle"):
        load_model(_model_with("Sparkle", "com.acme"))


def test_layer_names_resolve_or_fail_clearly(cnn: DigitsCNN, tmp_path: Path) -> None:
    assert isinstance(resolve_layer(cnn, "conv2"), torch.nn.Conv2d)
    with pytest.raises(LayerNotFoundError, match="no layer named 'conv9'"):
        resolve_layer(cnn, "conv9")
    _export(cnn, tmp_path / "m.onnx")
    om = load_model(tmp_path / "m.onnx").module
    assert resolve_layer(om, "/conv1/Conv").op_type == "Conv"  # type: ignore[union-attr]
    with pytest.raises(LayerNotFoundError, match="no node or tensor named"):
        resolve_layer(om, "/conv7/Conv")


def test_zip_that_is_not_a_torch_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hi")
    (tmp_path / "x.zip").write_bytes(buf.getvalue())
    with pytest.raises(ModelLoadError, match="not a torch file"):
        load_model(tmp_path / "x.zip")
