"""Small built-in models: the digits CNN everyone demos with, and tiny ResNet-like
and ViT-style nets for tests. All run on a CPU in milliseconds.

`train_demo_model(seed)` trains the digits CNN to >95 % test accuracy in about half
a second, so a demo never needs a download.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from deeproom.models.datasets import ImageDataset, load_digits


class DigitsCNN(nn.Module):
    """Two 3×3 convolutions, a pool and two linear layers, for 8×8 one-channel digits."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * 16, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a skip (a 1×1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class TinyResNet(nn.Module):
    """A stem, `blocks` residual blocks (the second one downsamples), global pooling, a head."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 8, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for i in range(blocks):
            cout = width * 2 if i == 1 else cin
            layers.append(ResidualBlock(cin, cout, stride=2 if i == 1 else 1))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out, so `softmax` yields the per-head maps."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h)))
        out = (attn @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A ViT for small images: patch embedding, class token, position embedding, encoder blocks."""

    def __init__(
        self, image_size: int = 8, patch: int = 2, channels: int = 1, classes: int = 10,
        dim: int = 32, depth: int = 2, heads: int = 4, mlp: int = 64,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be divisible by patch {patch}")
        self.grid = image_size // patch
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(t.shape[0], -1, -1)
        t = torch.cat([cls, t], dim=1) + self.pos_embed
        t = self.norm(self.blocks(t))
        return self.head(t[:, 0])


@dataclass(frozen=True)
class TrainedModel:
    """A model trained on a dataset split, with how well it did."""

    model: nn.Module
    train: ImageDataset
    test: ImageDataset
    test_accuracy: float
    seconds: float


def train_classifier(
    model: nn.Module, train: ImageDataset, test: ImageDataset, *, epochs: int = 12,
    batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
) -> TrainedModel:
    """Plain Adam training; seeded, so the same seed gives the same weights."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    model.train()
    n = len(train)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(train.x[idx]), train.y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(test.x).argmax(1) == test.y).float().mean())
    return TrainedModel(model, train, test, acc, time.perf_counter() - t0)


def train_demo_model(seed: int = 0, *, epochs: int = 6) -> TrainedModel:
    """The digits CNN, trained on 75 % of scikit-learn's digits; >95 % on the rest."""
    torch.manual_seed(seed)
    train, test = load_digits().split(0.25, seed=seed)
    return train_classifier(DigitsCNN(), train, test, epochs=epochs, lr=5e-3, seed=seed)


ZOO: dict[str, type[nn.Module]] = {"digits_cnn": DigitsCNN, "tiny_resnet": TinyResNet, "tiny_vit": TinyViT}
"""Built-in architectures by name (for checkpoints that hold only a state dict)."""


# --- real architectures, random weights (graph tests: grouping, layout, readability) --------
# Written out in plain torch (torchvision is not a dependency) with the module names the
# well-known implementations use, so their graphs group the same way: DenseNet-121's
# features.denseblockN.denselayerM, ResNet-50's layerN.M (Bottleneck), an Inception-style
# net's mixed_* blocks of parallel branches. All trace with torch.fx and export to ONNX.


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (bottleneck) then BN-ReLU-3×3 conv, concatenated onto its input."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, y], 1)


class DenseBlock(nn.Sequential):
    def __init__(self, layers: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bn_size))


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al. 2017); the defaults are DenseNet-121 (blocks 6, 12, 24, 16).
    `growth` and `init` scale the widths down for fast tests without changing the graph."""

    def __init__(self, blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, init: int = 64,
                 bn_size: int = 4, channels: int = 3, classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(channels, init, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(init))
        self.features.add_module("relu0", nn.ReLU())
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = init
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.relu(self.features(x)))))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4), plus the identity or a projected skip."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = self.downsample(x) if self.downsample is not None else x
        return self.relu(y + skip)


class ResNet(nn.Module):
    """ResNet with bottleneck blocks (He et al. 2016); the defaults are ResNet-50 (3, 4, 6, 3).
    `width` scales every stage's width down for fast tests without changing the graph."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, channels: int = 3,
                 classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        self.stage_names = [f"layer{i + 1}" for i in range(len(blocks))]
        for i, n in enumerate(blocks):
            w = width * 2**i
            stage = nn.Sequential(*[Bottleneck(cin if k == 0 else w * 4, w, 2 if (k == 0 and i > 0) else 1)
                                    for k in range(n)])
            self.add_module(f"layer{i + 1}", stage)
            cin = w * 4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.avgpool(x)))


class ConvBN(nn.Module):
    """Conv, BatchNorm, ReLU: Inception's basic unit."""

    def __init__(self, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """Four parallel branches (1×1; 1×1→3×3; 1×1→3×3→3×3; pool→1×1) concatenated."""

    def __init__(self, cin: int, w: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, w, 1)
        self.branch3x3_1 = ConvBN(cin, w, 1)
        self.branch3x3_2 = ConvBN(w, w, 3, padding=1)
        self.branch3x3dbl_1 = ConvBN(cin, w, 1)
        self.branch3x3dbl_2 = ConvBN(w, w, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(w, w, 3, padding=1)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.branch_pool = ConvBN(cin, w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_2(self.branch3x3_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(self.pool(x))
        return torch.cat([a, b, c, d], 1)


class Inception(nn.Module):
    """An Inception-v3-style net: a convolutional stem, `blocks` inception blocks with a
    reduction (strided pooling) between stages, pooling and a classifier."""

    def __init__(self, blocks: tuple[int, ...] = (3, 5, 2), width: int = 32, channels: int = 3,
                 classes: int = 1000) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(channels, width, 3, 2)
        self.Conv2d_2a_3x3 = ConvBN(width, width, 3)
        self.Conv2d_2b_3x3 = ConvBN(width, 2 * width, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, 2)
        self.mixed = nn.Sequential()
        cin = 2 * width
        for s, n in enumerate(blocks):
            for k in range(n):
                self.mixed.add_module(f"Mixed_{s + 5}{chr(ord('b') + k)}", InceptionBlock(cin, width))
                cin = 4 * width
            if s != len(blocks) - 1:
                self.mixed.add_module(f"reduction_{s + 1}", nn.MaxPool2d(3, 2, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        return self.fc(self.flatten(self.avgpool(self.mixed(x))))


def densenet121(**kw: int) -> DenseNet:
    return DenseNet((6, 12, 24, 16), **kw)


def resnet50(**kw: int) -> ResNet:
    return ResNet((3, 4, 6, 3), **kw)
