"""Random CNNs for `benchmarks/fuzz.py`: ``build(seed=N)`` makes the same network for the same seed.

Blocks (drawn at random, on a running channel count that is often odd): plain conv-BN-ReLU, residual add
(with a random inner width), two-branch concatenation, a channel split (``torch.split``/``chunk``) with one half
transformed and the halves concatenated back, grouped conv, depthwise-separable conv, squeeze-excite, max/avg
pooling, strided conv. Head: global average pool and a linear classifier.

Used as a typed factory spec, e.g. ``prunecli prune benchmarks/fuzznet.py:build:seed=7 --input-shape 1,3,32,32``.
"""

from __future__ import annotations

import random

import torch
from torch import nn


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=False))


class Residual(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.body = nn.Sequential(cbr(c, mid), nn.Conv2d(mid, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class Concat(nn.Module):
    def __init__(self, c: int, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = cbr(c, a, 1), cbr(c, b, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class Split(nn.Module):
    """Split channels in two, transform the first part, concatenate back (ShuffleNet-like, without shuffle)."""

    def __init__(self, c: int, chunk: bool) -> None:
        super().__init__()
        self.first = c // 2 if chunk else max(1, c // 3)
        self.chunk = chunk and c % 2 == 0
        self.body = cbr(self.first, self.first)

    def forward(self, x):
        if self.chunk:
            left, right = torch.chunk(x, 2, dim=1)
        else:
            left, right = torch.split(x, [self.first, x.shape[1] - self.first], dim=1)
        return torch.cat([self.body(left), right], dim=1)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class FuzzNet(nn.Module):
    def __init__(self, blocks: list[nn.Module], channels: int, classes: int, description: list[str]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)
        self.description = description

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.blocks(x)), 1))


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


def build(seed: int = 0, classes: int = 10) -> FuzzNet:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    c = rng.choice([5, 7, 8, 12, 15, 16, 24])
    blocks: list[nn.Module] = [cbr(3, c)]
    description = [f"stem 3->{c}"]
    size = 32
    for _ in range(rng.randint(2, 8)):
        kind = rng.choice(["conv", "residual", "concat", "split", "grouped", "depthwise", "se", "pool", "strided"])
        if kind == "conv":
            out = rng.randint(3, 40)
            blocks.append(cbr(c, out, rng.choice([1, 3])))
        elif kind == "residual":
            out = c
            blocks.append(Residual(c, rng.randint(2, 40)))
        elif kind == "concat":
            a, b = rng.randint(2, 24), rng.randint(2, 24)
            out = a + b
            blocks.append(Concat(c, a, b))
        elif kind == "split" and c >= 3:
            out = c
            blocks.append(Split(c, chunk=rng.random() < 0.5))
        elif kind == "grouped" and _divisors(c):
            groups = rng.choice(_divisors(c))
            out = groups * rng.randint(1, 4)
            blocks.append(cbr(c, out, 3, groups=groups))
        elif kind == "depthwise":
            out = rng.randint(3, 40)
            blocks.append(nn.Sequential(cbr(c, c, 3, groups=c), cbr(c, out, 1)))
        elif kind == "se":
            out = c
            blocks.append(SqueezeExcite(c, rng.randint(1, max(1, c // 2))))
        elif kind == "pool" and size >= 4:
            out = c
            blocks.append(rng.choice([nn.MaxPool2d(2), nn.AvgPool2d(2)]))
            size //= 2
        elif kind == "strided" and size >= 4:
            out = rng.randint(3, 40)
            blocks.append(cbr(c, out, 3, stride=2))
            size //= 2
        else:
            continue
        description.append(f"{kind} {c}->{out}")
        c = out
    return FuzzNet(blocks, c, classes, description)
