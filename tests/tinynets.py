"""Small hand-built models for fast tests (importable as tinynets:NAME factories)."""

from __future__ import annotations

import torch
from torch import nn


class TinyResNet(nn.Module):
    """conv -> BN -> two residual blocks -> pool -> linear head. Two groups tied by residual adds."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv_a = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(2 * width)
        self.conv_b = nn.Conv2d(2 * width, width, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(x + self.bn_b(self.conv_b(y)))
        return self.head(torch.flatten(self.pool(x), 1))


def tiny_resnet(num_classes: int = 10, width: int = 16) -> nn.Module:
    return TinyResNet(num_classes=num_classes, width=width)
