"""Analyses on tiny models with hand-set weights: exact answers where they exist,
behaviour (the map lands on the object) where they do not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deeproom.models.analysis import (
    Activations,
    AllActivations,
    AttentionMaps,
    ConfusionMatrix,
    FeatureVisualization,
    Filters,
    GradCAM,
    GradCAMPlusPlus,
    IntegratedGradients,
    Occlusion,
    Saliency,
    ScoreCAM,
    confusion_from_predictions,
)
from deeproom.models.errors import AnalysisError, JobCancelled, LayerNotFoundError, TargetError
from deeproom.models.jobs import JobContext
from deeproom.models.zoo import SelfAttention, TinyViT


class HandNet(nn.Module):
    """conv 1×1 (weights 2 and 1) → global average pool → linear [[1, −1], [0, 3]]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([2.0, 1.0]).reshape(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 3.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.conv(x))))


X = torch.tensor([[[[1.0, 2.0], [3.0, -4.0]]]])


def test_activations_exact() -> None:
    a = Activations(HandNet(), "conv").compute(X)
    assert torch.equal(a[0, 0], 2 * X[0, 0]) and torch.equal(a[0, 1], X[0, 0])
    every = AllActivations(HandNet()).compute(X)
    assert set(every) == {"conv", "pool", "flatten", "fc"}
    assert torch.allclose(every["fc"], torch.tensor([[0.5, 1.5]]))


def test_gradcam_exact() -> None:
    net = HandNet()
    # target 0: α = [1/4, −1/4] → ReLU(2x/4 − x/4) = ReLU(x/4)
    cam0 = GradCAM(net, "conv", normalize=False).compute(X, 0)
    assert torch.allclose(cam0[0], torch.tensor([[0.25, 0.5], [0.75, 0.0]]))
    # target 1: α = [0, 3/4] → ReLU(3x/4)
    cam1 = GradCAM(net, "conv", normalize=False).compute(X, 1)
    assert torch.allclose(cam1[0], torch.tensor([[0.75, 1.5], [2.25, 0.0]]))
    assert torch.allclose(GradCAM(net, "conv").compute(X, 1)[0], torch.tensor([[1 / 3, 2 / 3], [1.0, 0.0]]))


def test_gradcam_plus_plus_exact() -> None:
    # g_k = W[t,k]/4 everywhere; α = g²/(2g² + ΣA·g³); weight_k = Σ_ij α·ReLU(g)
    net = HandNet()
    a_sum = torch.tensor([2.0 * 2, 1.0 * 2])  # ΣA over the map: 2·Σx and Σx, Σx = 2
    g = torch.tensor([0.0, 0.75])  # target 1
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + a_sum * g**3), torch.zeros(2))
    w = 4 * alpha * torch.relu(g)
    expected = torch.relu(w[0] * 2 * X[0, 0] + w[1] * X[0, 0])
    got = GradCAMPlusPlus(net, "conv", normalize=False).compute(X, 1)[0]
    assert torch.allclose(got, expected)


def test_cams_land_on_the_object() -> None:
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 3:5, 1:3] = 1.0
    for cam_cls in (GradCAM, GradCAMPlusPlus, ScoreCAM):
        cam = cam_cls(HandNet(), "conv").compute(x, 1)[0]
        r, c = divmod(int(cam.argmax()), 6)
        assert 3 <= r < 5 and 1 <= c < 3, cam_cls
        assert float(cam.max()) == pytest.approx(1.0) and float(cam.min()) >= 0


def test_cams_on_vit_token_grids() -> None:
    torch.manual_seed(0)
    vit = TinyViT().eval()
    x = torch.rand(2, 1, 8, 8)
    for cam_cls in (GradCAM, GradCAMPlusPlus, ScoreCAM):
        cam = cam_cls(vit, "blocks.1").compute(x)
        assert cam.shape == (2, 4, 4) and torch.isfinite(cam).all()


def test_attention_maps_per_head() -> None:
    torch.manual_seed(0)
    vit = TinyViT(heads=4).eval()
    att = AttentionMaps(vit, "blocks.0.attn.softmax").compute(torch.rand(3, 1, 8, 8))
    assert att.shape == (3, 4, 17, 17)
    assert torch.allclose(att.sum(-1), torch.ones(3, 4, 17))
    mha = nn.MultiheadAttention(8, 2, batch_first=True)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    w = AttentionMaps(Wrap().eval(), "attn").compute(torch.rand(2, 5, 8))
    assert w.shape == (2, 2, 5, 5)
    with pytest.raises(AnalysisError, match="attention maps need"):
        AttentionMaps(vit, "blocks.0.attn.qkv").compute(torch.rand(1, 1, 8, 8))
    assert isinstance(vit.blocks[0].attn, SelfAttention)


def test_filters_shapes() -> None:
    first = nn.Conv2d(3, 4, 3)
    conv_rgb = nn.Sequential(first, nn.ReLU(), nn.Conv2d(4, 5, 3))
    rgb = Filters(conv_rgb, "0").compute()
    assert rgb.shape == (4, 3, 3, 3)  # [out, kh, kw, RGB]
    assert torch.equal(rgb[1, :, :, 2], first.weight.detach()[1, 2])
    assert Filters(conv_rgb, "2").compute().shape == (20, 3, 3)
    with pytest.raises(AnalysisError, match="has no weight"):
        Filters(conv_rgb, "1")


def test_pixel_attributions() -> None:
    net = HandNet()
    x = torch.rand(2, 1, 4, 4)
    assert Saliency(net).compute(x, 1).shape == x.shape
    ig = IntegratedGradients(net, steps=16).compute(x, 1)
    with torch.no_grad():  # completeness: attributions sum to f(x) − f(0) (a linear net: exactly)
        diff = net(x)[:, 1] - net(torch.zeros_like(x))[:, 1]
    assert torch.allclose(ig.sum(dim=(1, 2, 3)), diff, atol=1e-4)
    assert Occlusion(net, window=2).compute(x, 1).shape == x.shape


def test_bad_layer_and_target() -> None:
    with pytest.raises(LayerNotFoundError):
        GradCAM(HandNet(), "conv7")
    with pytest.raises(TargetError, match="out of range; the model has 2 classes"):
        GradCAM(HandNet(), "conv").compute(X, 5)
    with pytest.raises(TargetError):
        GradCAM(HandNet(), "conv").compute(X, -1)


def test_confusion_matrix_exact() -> None:
    class OneHot(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 5.0

    pred = torch.tensor([0, 0, 1, 2, 2, 2])
    y = torch.tensor([0, 1, 1, 2, 2, 0])
    x = nn.functional.one_hot(pred, 3).float()
    ev = ConfusionMatrix(OneHot()).compute(x, y)
    assert ev.matrix.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    assert torch.allclose(ev.precision, torch.tensor([0.5, 1.0, 2 / 3], dtype=torch.float64))
    assert torch.allclose(ev.recall, torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(ev.f1, torch.tensor([0.5, 2 / 3, 0.8], dtype=torch.float64))
    assert ev.accuracy == pytest.approx(4 / 6)
    assert sorted(ev.misclassified.tolist()) == [1, 5]
    _, p, _, f = confusion_from_predictions(torch.tensor([0, 0]), torch.tensor([0, 0]), 3)
    assert p.tolist() == [1.0, 0.0, 0.0] and f.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(TargetError):
        ConfusionMatrix(OneHot()).compute(x, torch.tensor([0, 1, 1, 2, 2, 7]))


def test_feature_visualization_excites_the_channel_and_is_seeded() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).eval()
    fv = FeatureVisualization(net, "2", steps=40)
    img = fv.compute((1, 1, 8, 8), 2, JobContext(seed=5))
    again = fv.compute((1, 1, 8, 8), 2, JobContext(seed=5))
    assert torch.equal(img, again) and img.min() >= 0 and img.max() <= 1
    noise = torch.sigmoid(torch.randn(16, 1, 8, 8) * 0.1)
    with torch.no_grad():
        assert net(img)[:, 2].mean() > net(noise)[:, 2].mean(1).max()
    with pytest.raises(TargetError):
        fv.compute((1, 1, 8, 8), 9)
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(JobCancelled):
        fv.compute((1, 1, 8, 8), 0, ctx)


class ColourNet(nn.Module):
    """3 → 4 channels, then two classes: a spatial layer ("conv") and a feature layer ("pool")."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))))


def test_overlays_show_the_input_as_it_was_not_as_the_model_takes_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With mean/std the model takes values far outside [0, 1]; every overlay's base image is
    the un-normalised input, in [0, 1]."""
    import numpy as np

    from deeproom.content import decode_content
    from deeproom.models.blobs import image_uint8
    from deeproom.models.datasets import Preprocess, load_user_data
    from deeproom.models.loading import load_model
    from deeproom.models.tasks import run_analysis

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), y=rng.integers(0, 2, 12))
    norm = load_user_data(tmp_path / "d.npz", Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))
    plain = load_user_data(tmp_path / "d.npz", Preprocess())
    assert norm.x.min() < -1 and norm.x.max() > 1.5  # normalised: not displayable as it is
    torch.manual_seed(0)
    loaded = load_model(ColourNet().eval(), input_shape=(1, 3, 16, 16))
    want = image_uint8(plain.x[5])
    assert want.shape == (16, 16, 3) and 0 < want.mean() < 255
    for name, params in (("gradcam", {"layer": "conv"}), ("layercam", {"layer": "conv"}), ("saliency", {}),
                         ("occlusion", {}), ("integrated_gradients", {})):
        meta, arrays = decode_content(run_analysis(loaded, name, {**params, "index": 5}, dataset=norm))
        assert meta["kind"] == "grad_cam"
        got = arrays["image"]
        # uint8 of [0, 1] values; undoing mean/std can differ from the plain load by float rounding only
        assert got.shape == want.shape and int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1, name
        assert torch.allclose(norm.images01(5), plain.x[5], atol=1e-5)


def test_a_large_cloud_carries_planned_thumbnails_and_a_small_one_one_per_point() -> None:
    import numpy as np

    from deeproom.content import decode_content
    from deeproom.models.datasets import ImageDataset, thumbnails
    from deeproom.models.loading import load_model
    from deeproom.models.tasks import CLOUD_THUMBNAILS, run_analysis

    torch.manual_seed(0)
    n = 5000
    x = torch.rand(n, 3, 16, 16)
    ds = ImageDataset(x, torch.randint(0, 2, (n,)), ("a", "b"), "many")
    loaded = load_model(ColourNet().eval(), input_shape=(1, 3, 16, 16))
    meta, arrays = decode_content(run_analysis(loaded, "embedding", {"layer": "pool", "method": "pca"}, dataset=ds))
    assert arrays["positions"].shape == (n, 2) and meta["kind"] == "latent_cloud"
    th, index = arrays["thumbnails"], arrays["thumbnail_index"]
    assert th.shape == (CLOUD_THUMBNAILS, 16, 16, 3) and th.dtype == np.uint8  # not one image per point
    assert index.shape == (n,) and index.dtype == np.int32 and index.min() == -1 and index.max() == CLOUD_THUMBNAILS - 1
    shown = np.flatnonzero(index >= 0)
    assert len(shown) == CLOUD_THUMBNAILS and len(set(index[shown].tolist())) == CLOUD_THUMBNAILS
    for i in shown[[0, 100, -1]]:  # each point's thumbnail is its own image
        assert np.array_equal(th[index[i]], thumbnails(ds, size=16, indices=[int(i)])[0])
    # a cloud of at most 4,096 points has one thumbnail per point, in point order (as views read it)
    meta, arrays = decode_content(run_analysis(loaded, "embedding", {"layer": "pool", "method": "pca", "limit": 300},
                                               dataset=ds))
    assert arrays["thumbnails"].shape == (300, 16, 16, 3) and arrays["thumbnail_index"].tolist() == list(range(300))
    assert np.array_equal(arrays["thumbnails"][7], thumbnails(ds, size=16, indices=[7])[0])
