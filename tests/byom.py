"""Thirteen small CNNs of distinct styles, written for the converter's tests (not from the zoo).

Each is written the way third-party code is: functional calls, shape guards, Python control
flow over ``self.layers``, dataclass and dict outputs, channels-last blocks, custom modules with
their own parameters. Sizes are small so that every test runs in a second or two; the channel
patterns are those of the real families.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


# ---- VGG-style plain -----------------------------------------------------------------------------
@dataclass
class Output:
    logits: Tensor
    features: Tensor | None = None


class VGG(nn.Module):
    """Conv-BN-ReLU stacks and max pools, flattened into a two-layer classifier; a dataclass out."""

    cfg = (16, "M", 32, 32, "M", 64)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers, c = [], 3
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(c, v, 3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(True),
                ]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(
            nn.Linear(c * 4 * 4, 48), nn.ReLU(True), nn.Dropout(0.2), nn.Linear(48, num_classes)
        )

    def forward(self, x: Tensor) -> Output:
        if x.shape[1] != 3:
            raise ValueError("VGG takes RGB images")
        x = self.avgpool(self.features(x))
        return Output(self.classifier(torch.flatten(x, 1)))


# ---- ResNet (basic and bottleneck) ---------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inp: int, planes: int, stride: int = 1, groups: int = 1, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inp != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int = 1, groups: int = 1, width: int = 64):
        super().__init__()
        mid = int(planes * (width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inp, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inp != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, planes=(16, 32, 64), groups=1, width=64, num_classes=10):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i, (p, n) in enumerate(zip(planes, layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(self.inplanes, p, stride, groups, width))
                self.inplanes = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for layer in self.layers:
            x = layer(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_basic() -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2))


def resnet_bottleneck() -> ResNet:
    return ResNet(Bottleneck, (1, 2, 1), planes=(8, 16, 32))


def resnext() -> ResNet:
    return ResNet(Bottleneck, (1, 1, 1), planes=(8, 16, 32), groups=4, width=8)


# ---- MobileNet v2 --------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = inp * t
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if t != 1:
            layers += [
                nn.Conv2d(inp, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    setting = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2))

    def __init__(self, num_classes: int = 10, last: int = 128) -> None:
        super().__init__()
        c = 32
        features: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(True))
        ]
        for t, oup, n, s in self.setting:
            for i in range(n):
                features.append(InvertedResidual(c, oup, s if i == 0 else 1, t))
                c = oup
        features.append(
            nn.Sequential(nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(True))
        )
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---- MobileNet v3 (SE, hard-swish) ---------------------------------------------------------------
class SqueezeExcitation(nn.Module):
    def __init__(self, c: int, squeeze: int, activation=nn.ReLU, scale=nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = activation()
        self.scale_activation = scale()

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.scale_activation(self.fc2(self.activation(self.fc1(s))))
        return s * x


class V3Block(nn.Module):
    def __init__(self, inp, k, exp, out, se, act, stride) -> None:
        super().__init__()
        self.use_res = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if exp != inp:
            layers += [nn.Conv2d(inp, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
        layers += [
            nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False),
            nn.BatchNorm2d(exp),
            act(),
        ]
        if se:
            layers.append(SqueezeExcitation(exp, _divisible(exp // 4)))
        layers += [nn.Conv2d(exp, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        if self.use_res:
            y += x
        return y


class MobileNetV3(nn.Module):
    # k, exp, out, se, activation, stride
    setting = (
        (3, 16, 16, True, nn.ReLU, 2),
        (3, 72, 24, False, nn.ReLU, 2),
        (3, 88, 24, False, nn.ReLU, 1),
        (5, 96, 40, True, nn.Hardswish, 2),
        (5, 240, 40, True, nn.Hardswish, 1),
    )

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        ]
        c = 16
        for k, exp, out, se, act, s in self.setting:
            layers.append(V3Block(c, k, exp, out, se, act, s))
            c = out
        layers.append(
            nn.Sequential(nn.Conv2d(c, 6 * c, 1, bias=False), nn.BatchNorm2d(6 * c), nn.Hardswish())
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * c, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- EfficientNet MBConv (SE with SiLU, stochastic depth) ----------------------------------------
def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    def __init__(self, inp: int, out: int, expand: int, k: int, stride: int, p: float) -> None:
        super().__init__()
        mid = inp * expand
        self.has_skip = stride == 1 and inp == out
        self.drop = p
        self.expand = (
            nn.Sequential(nn.Conv2d(inp, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
            if expand != 1
            else nn.Identity()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.SiLU(),
        )
        self.se = SqueezeExcitation(mid, max(1, inp // 4), activation=nn.SiLU, scale=nn.Sigmoid)
        self.project = nn.Sequential(nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        if self.has_skip:
            y = drop_path(y, self.drop, self.training) + x
        return y


class EfficientNet(nn.Module):
    setting = ((1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2))  # expand, out, n, k, stride

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU()
        )
        blocks, c, i = [], 32, 0
        total = sum(n for _, _, n, _, _ in self.setting)
        for e, out, n, k, s in self.setting:
            for j in range(n):
                blocks.append(MBConv(c, out, e, k, s if j == 0 else 1, 0.2 * i / total))
                c, i = out, i + 1
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(c, 160, 1, bias=False), nn.BatchNorm2d(160), nn.SiLU())
        self.fc = nn.Linear(160, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean((2, 3)))


# ---- DenseNet (concatenation) --------------------------------------------------------------------
class DenseLayer(nn.Module):
    def __init__(self, inp: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(inp)
        self.conv1 = nn.Conv2d(inp, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n: int, inp: int, growth: int, bn_size: int = 2) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", DenseLayer(inp + i * growth, growth, bn_size))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 16, blocks=(3, 3), num_classes: int = 10) -> None:
        super().__init__()
        c = 32
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, c, 3, 1, 1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(c))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(
                    f"transition{i + 1}",
                    nn.Sequential(
                        nn.BatchNorm2d(c),
                        nn.ReLU(),
                        nn.Conv2d(c, c // 2, 1, bias=False),
                        nn.AvgPool2d(2),
                    ),
                )
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


# ---- Inception-style multi-branch ----------------------------------------------------------------
class BasicConv(nn.Module):
    def __init__(self, inp: int, out: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, out, bias=False, **kw)
        self.bn = nn.BatchNorm2d(out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, inp: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(inp, 16, kernel_size=1)
        self.branch5x5_1 = BasicConv(inp, 12, kernel_size=1)
        self.branch5x5_2 = BasicConv(12, 16, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv(inp, 16, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv(16, 24, kernel_size=3, padding=1)
        self.branch_pool = BasicConv(inp, pool, kernel_size=1)

    def _forward(self, x: Tensor) -> list[Tensor]:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return [b1, b5, b3, bp]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self._forward(x), 1)


class Inception(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = BasicConv(3, 24, kernel_size=3, padding=1)
        self.mixed_a = InceptionA(24, 8)
        self.mixed_b = InceptionA(64, 16)
        self.fc = nn.Linear(72, num_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.mixed_b(self.mixed_a(F.max_pool2d(self.stem(x), 2)))
        return {"logits": self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))}


# ---- ShuffleNet v2 (split, concat, shuffle) ------------------------------------------------------
def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        inner = inp if stride > 1 else branch
        self.branch2 = nn.Sequential(
            nn.Conv2d(inner, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self, repeats=(2, 2), channels=(24, 48, 96), last: int = 128, num_classes: int = 10
    ):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        c = channels[0]
        stages = []
        for n, out in zip(repeats, channels[1:], strict=True):
            stages.append(
                nn.Sequential(
                    ShuffleUnit(c, out, 2), *[ShuffleUnit(out, out, 1) for _ in range(n - 1)]
                )
            )
            c = out
        self.stages = nn.Sequential(*stages)
        self.conv5 = nn.Sequential(
            nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv5(self.stages(self.conv1(x)))
        return self.fc(x.mean([2, 3]))


# ---- ConvNeXt (7x7 depthwise, channels-last LayerNorm, layer scale) ------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, by permuting to channels-last."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float = 0.5, p: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        result = self.layer_scale * self.block(x)
        return drop_path(result, self.p, self.training) + x


class ConvNeXt(nn.Module):
    def __init__(self, dims=(16, 32), depths=(2, 2), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, dims[0], 2, 2), LayerNorm2d(dims[0], eps=1e-6))
        ]
        for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
            layers.append(nn.Sequential(*[CNBlock(d) for _ in range(n)]))
            if i + 1 < len(dims):
                layers.append(
                    nn.Sequential(LayerNorm2d(d, eps=1e-6), nn.Conv2d(d, dims[i + 1], 2, 2))
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)))


# ---- RegNet (grouped convolutions + SE) ----------------------------------------------------------
class RegNetBlock(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, group_width: int, se_ratio: float = 0.25):
        super().__init__()
        groups = out // group_width
        self.a = nn.Sequential(
            nn.Conv2d(inp, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)
        )
        self.b = nn.Sequential(
            nn.Conv2d(out, out, 3, stride, 1, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        )
        self.se = SqueezeExcitation(out, max(1, round(inp * se_ratio)), scale=nn.Sigmoid)
        self.c = nn.Sequential(nn.Conv2d(out, out, 1, bias=False), nn.BatchNorm2d(out))
        self.proj = None
        if stride != 1 or inp != out:
            self.proj = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return F.relu(shortcut + self.c(self.se(self.b(self.a(x)))))


class RegNet(nn.Module):
    def __init__(
        self, widths=(32, 64), depths=(1, 2), group_width: int = 16, num_classes: int = 10
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        blocks, c = [], 16
        for w, d in zip(widths, depths, strict=True):
            for i in range(d):
                blocks.append(RegNetBlock(c, w, 2 if i == 0 else 1, group_width))
                c = w
        self.trunk = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.trunk(self.stem(x)), 1).flatten(1))


# ---- U-Net (skip concatenations) -----------------------------------------------------------------
class DoubleConv(nn.Sequential):
    def __init__(self, inp: int, out: int) -> None:
        super().__init__(
            nn.Conv2d(inp, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
            nn.Conv2d(out, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    def __init__(self, inp: int, skip: int, out: int) -> None:
        super().__init__()
        self.conv = DoubleConv(inp + skip, out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    def __init__(self, num_classes: int = 3, base: int = 16) -> None:
        super().__init__()
        self.inc = DoubleConv(3, base)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(base, 2 * base))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(2 * base, 4 * base))
        self.up1 = Up(4 * base, 2 * base, 2 * base)
        self.up2 = Up(2 * base, base, base)
        self.outc = nn.Conv2d(base, num_classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        return {"out": self.outc(self.up2(self.up1(x3, x2), x1))}


ARCHITECTURES = {
    "vgg": VGG,
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "resnext": resnext,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3": MobileNetV3,
    "efficientnet": EfficientNet,
    "densenet": DenseNet,
    "inception": Inception,
    "shufflenet_v2": ShuffleNetV2,
    "convnext": ConvNeXt,
    "regnet": RegNet,
    "unet": UNet,
}
INPUT = (3, 16, 16)


def build(name: str, seed: int = 0) -> nn.Module:
    """The architecture in eval mode with random weights and random BN statistics (so that the
    check against the original exercises every statistic)."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.LayerNorm | nn.GroupNorm) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()
