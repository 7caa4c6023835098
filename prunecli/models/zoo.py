"""Small built-in architectures (for the demo and quality benchmarks), loadable as ``prunecli:NAME[:k=v]``.

A ``prunecli:NAME`` spec is a data spec (see :mod:`prunecli.models.arch`): it may be read from a checkpoint or a
bundle, because it can only reach the constructors registered in :data:`MODELS`.
"""

from __future__ import annotations

import torch
from torch import nn


def _head_and_init(net: nn.Module, cin: int, num_classes: int) -> None:
    """Global average pool + one linear layer, then He initialisation of every conv (in this order, which fixes
    the random stream a seed gives the weights)."""
    net.pool = nn.AdaptiveAvgPool2d(1)
    net.fc = nn.Linear(cin, num_classes)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2) with three stages of ``width``, ``2*width``, ``4*width`` channels."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth={depth} must be 6n+2 (8, 14, 20, 32, 56, ...)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        _head_and_init(self, cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


def cifar_resnet(depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels)


class PlainVGG(nn.Module):
    """A VGG-style plain network (conv-BN-ReLU, max-pool between stages, global average pool, one linear layer)
    whose late layers are far wider than the task needs: the CIFAR VGG setting of the pruning literature, where
    redundancy is uneven across layers and the allocation of channels matters. ``cfg`` lists widths as multiples
    of ``width``; ``"M"`` is a 2x2 max-pool."""

    CFG = (2, 2, "M", 4, 4, "M", 8, 16, "M", 32, 32)

    def __init__(self, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers, cin = [], in_channels
        for item in self.CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = int(item) * width
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        _head_and_init(self, cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def plain_vgg(width: int = 16, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return PlainVGG(width=width, num_classes=num_classes, in_channels=in_channels)


# name -> constructor; the only callables a ``prunecli:NAME`` spec can reach
MODELS = {"cifar_resnet": cifar_resnet, "plain_vgg": plain_vgg}
