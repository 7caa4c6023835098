"""Small hand-built models for fast tests (importable as tinynets:NAME factories)."""

from __future__ import annotations

import torch
from torch import nn


class TinyResNet(nn.Module):
    """conv -> BN -> two residual blocks -> pool -> linear head. Two groups tied by residual adds."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
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


def tiny_resnet(num_classes: int = 10, width: int = 64) -> nn.Module:
    return TinyResNet(num_classes=num_classes, width=width)


class TwoConv(nn.Module):
    """conv1 (3->8) -> [bn1] -> relu -> conv2 (8->8) -> relu -> pool -> head. conv1's group is conv1 out + conv2 in."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(torch.flatten(self.pool(x), 1))


# A fixed permutation so the smallest filters are not simply the first ones.
FILTER_ORDER = [5, 2, 7, 0, 3, 6, 1, 4]  # FILTER_ORDER[i] = rank of filter i (0 = smallest norm)


def two_conv_magnitude() -> nn.Module:
    """conv1 filter i has every weight = (rank_i + 1) / 10; conv2 weights are all equal, so l1/l2 rank by conv1."""
    model = TwoConv()
    with torch.no_grad():
        for i, rank in enumerate(FILTER_ORDER):
            model.conv1.weight[i].fill_((rank + 1) / 10)
        model.conv2.weight.fill_(0.05)
    return model


def two_conv_bn() -> nn.Module:
    """Equal conv weights; BatchNorm gammas follow FILTER_ORDER."""
    model = TwoConv(bn=True)
    with torch.no_grad():
        model.conv1.weight.fill_(0.1)
        model.conv2.weight.fill_(0.05)
        for i, rank in enumerate(FILTER_ORDER):
            model.bn1.weight[i] = (rank + 1) / 10
    return model


def two_conv_redundant() -> nn.Module:
    """Filters 0-3 are near-copies of one filter (redundant), filters 4-7 point in distinct directions."""
    model = TwoConv()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        base = torch.randn(3, 3, 3, generator=g)
        for i in range(4):
            model.conv1.weight[i] = base + 0.01 * torch.randn(3, 3, 3, generator=g)
        for i in range(4, 8):
            model.conv1.weight[i] = 3 * torch.randn(3, 3, 3, generator=g)
        model.conv2.weight.fill_(0.05)
    return model


def unbalanced_resnet() -> nn.Module:
    """TinyResNet whose conv_a group has far smaller weights than the others: global ranking prunes it most."""
    model = TinyResNet(width=64)
    with torch.no_grad():
        model.conv_a.weight.mul_(0.01)
        model.bn_a.weight.mul_(0.01)
    return model


class TwoBranch(nn.Module):
    """Two parallel conv branches (16 channels each, equal FLOPs) concatenated before the head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.relu(self.bn_a(self.a(x))), torch.relu(self.bn_b(self.b(x)))], dim=1)
        return self.head(torch.flatten(self.pool(x), 1))


def two_branch_one_sensitive() -> nn.Module:
    """Branch ``a`` carries everything the head uses; the head ignores branch ``b`` (zero columns), so
    pruning ``b`` costs nothing and pruning ``a`` costs accuracy."""
    torch.manual_seed(0)
    model = TwoBranch().eval()
    with torch.no_grad():
        model.head.weight[:, :16] = 3 * torch.randn(4, 16)
        model.head.weight[:, 16:] = 0.0
    return model


class ConcatIntoGrouped(nn.Module):
    """Branches of 12 and 6 channels concatenated into a conv with 9 groups (2 input channels per group): neither
    branch can lose channels alone without leaving the grouped conv's groups unequal."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.grouped = nn.Conv2d(18, 27, 3, padding=1, groups=9, bias=False)
        self.bn = nn.BatchNorm2d(27)
        self.mix = nn.Conv2d(27, 24, 1, bias=False)
        self.head = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        x = torch.relu(self.mix(torch.relu(self.bn(self.grouped(x)))))
        return self.head(x.mean(dim=(2, 3)))


def concat_into_grouped() -> nn.Module:
    return ConcatIntoGrouped()


class TwoGroupings(nn.Module):
    """One 36-channel group read by a 6-group and a 9-group conv: removable positions repeat in lcm(6, 9) = 18 blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 36, 3, padding=1, bias=False)
        self.g6 = nn.Conv2d(36, 12, 3, padding=1, groups=6, bias=False)
        self.g9 = nn.Conv2d(36, 18, 3, padding=1, groups=9, bias=False)
        self.head = nn.Linear(30, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([self.g6(x), self.g9(x)], dim=1)
        return self.head(x.mean(dim=(2, 3)))


def two_groupings() -> nn.Module:
    return TwoGroupings()


class TinyMobile(nn.Module):
    """stem -> depthwise -> pointwise -> depthwise -> pointwise -> pool -> head (MobileNet-like blocks without
    residuals): depthwise convs follow their group's count on both sides."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.dw1 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.pw1 = nn.Sequential(nn.Conv2d(w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.dw2 = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=2 * w, bias=False),
                                 nn.BatchNorm2d(2 * w), nn.ReLU())
        self.pw2 = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw2(self.dw2(self.pw1(self.dw1(self.stem(x)))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_mobile(num_classes: int = 10, width: int = 32) -> nn.Module:
    return TinyMobile(num_classes=num_classes, width=width)


class TinyVgg(nn.Module):
    """Five conv -> BN -> ReLU layers (two of them strided), pool, head: four prunable groups, each its own layer,
    so a channel step moves latency by a few percent (fine enough for a measured latency fit)."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        spec = [(3, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)]
        self.features = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
            for i, o, s in spec])
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def tiny_vgg(num_classes: int = 10, width: int = 32) -> nn.Module:
    return TinyVgg(num_classes=num_classes, width=width)


class TinyPlain(nn.Module):
    """conv -> relu -> conv -> relu -> pool -> linear, no normalisation: N processes with batch B train it exactly
    as one process with batch N*B does (BatchNorm would see each process's share only)."""

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.flatten(self.pool(x), 1))


def tiny_plain(num_classes: int = 4, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return TinyPlain(num_classes=num_classes, width=width)


class TinyGroupNorm(nn.Module):
    """conv -> GroupNorm -> relu -> conv -> pool -> head: the norm mixes channels (zeroing one is not removing it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 48, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.norm(self.conv1(x)))))
        return self.head(torch.flatten(self.pool(x), 1))


def tiny_groupnorm() -> nn.Module:
    torch.manual_seed(0)
    return TinyGroupNorm()


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """torchvision's VisionTransformer at toy size (input 1x3x32x32): 8x8 patches, 2 encoder layers,
    nn.MultiheadAttention with 4 heads of 8 dimensions, MLP 64."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                              num_classes=num_classes)
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision zeroes the head: every output would be 0
    nn.init.normal_(model.encoder.pos_embedding, std=0.2)
    return model


class ShuffleBlock(nn.Module):
    """Two conv branches, concatenated and channel-shuffled (ShuffleNet's view -> transpose -> view), then a conv
    that reads the shuffled channels. Removing channel b of one branch must remove channel b of the other."""

    def __init__(self, width: int = 16, groups: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.branch_a = nn.Sequential(nn.Conv2d(16, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(16, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.groups = groups
        self.mix = nn.Conv2d(2 * width, 32, 1, bias=False)
        self.bn_mix = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x = torch.relu(self.bn_mix(self.mix(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def shuffle_block(width: int = 16, groups: int = 2) -> nn.Module:
    return ShuffleBlock(width=width, groups=groups)


class FlatHead(nn.Module):
    """conv1 -> relu -> conv2 -> relu -> flatten (8 channels x H x W) -> linear head: conv2's group crosses the
    flatten, whose index mapping multiplies each channel by H*W."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * size * size, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.flatten(x, 1))


def flat_head() -> nn.Module:
    return FlatHead()


class Expand5(nn.Module):
    """A branch through a 5-D ``expand`` that is not grouped-query attention, added back to itself, next to a plain
    conv branch. Torch-Pruning reads every 5-D expand as Hugging Face GQA and divides by zero mapping the add back
    through it (NesT, Twins, GC ViT); only the groups crossing the expand should be lost."""

    def __init__(self) -> None:
        super().__init__()
        self.a1 = nn.Conv2d(3, 8, 3, padding=1)
        self.a2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b2 = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a1(x))
        a = a.unsqueeze(1).expand(-1, 2, -1, -1, -1).mean(1)
        a = self.a2(a) + a
        b = self.b2(torch.relu(self.b1(x)))
        return self.head(torch.cat([a, b], 1).mean((2, 3)))


def expand5() -> nn.Module:
    return Expand5()


class TokenTuple(nn.Module):
    """A class token passed with the patches to a block as a tuple (timm's PiT): the token is a parameter expanded
    under ``no_grad``, which FlopCounterMode's module tracker could not hook."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.token = nn.Parameter(torch.randn(1, 1, 16))
        self.block = _TupleBlock()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x, token = self.block((x, self.token.expand(x.shape[0], -1, -1)))
        return self.head(x.mean(1) + token[:, 0])


class _TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, pair):
        x, token = pair
        return x + self.fc2(torch.relu(self.fc1(x))), token


def token_tuple() -> nn.Module:
    return TokenTuple()


class StdConvNet(nn.Module):
    """Two of timm's ScaledStdConv2d (NFNet's weight-standardised conv, with a per-output-channel ``gain``) and a
    linear head."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import ScaledStdConv2d

        self.conv1 = ScaledStdConv2d(3, 32, 3)
        self.conv2 = ScaledStdConv2d(32, 32, 3)
        with torch.no_grad():
            self.conv1.gain.uniform_(0.5, 1.5)
            self.conv2.gain.uniform_(0.5, 1.5)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def std_conv_net() -> nn.Module:
    torch.manual_seed(0)
    return StdConvNet()


class TinyGhost(nn.Module):
    """GhostNet's pattern: a layer concatenated with a depthwise copy of it, then a depthwise conv over both, so the
    depthwise conv's 12 output channels are 6 pairs (channel i and 6+i go together)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.primary = nn.Conv2d(8, 6, 1, bias=False)
        self.bn_p = nn.BatchNorm2d(6)
        self.cheap = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.bn_c = nn.BatchNorm2d(6)
        self.conv_dw = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False)
        self.bn_dw = nn.BatchNorm2d(12)
        self.pw = nn.Conv2d(12, 16, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        p = torch.relu(self.bn_p(self.primary(x)))
        c = torch.relu(self.bn_c(self.cheap(p)))
        y = torch.cat([p, c], 1)
        y = self.bn_dw(self.conv_dw(y))
        y = torch.relu(self.bn_pw(self.pw(y)))
        return self.head(torch.flatten(self.pool(y), 1))


def tiny_ghost(num_classes: int = 10) -> nn.Module:
    return TinyGhost(num_classes=num_classes)


class TinyLayerScale(nn.Module):
    """conv -> relu -> conv scaled per channel by a parameter of the model itself (as ConvNeXt's layer scale), not
    of a layer: a cost the per-layer cost polynomial does not see."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.scale = nn.Parameter(torch.full((width, 1, 1), 0.5))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x) * self.scale)
        return self.head(x.mean(dim=(2, 3)))


def tiny_layer_scale(num_classes: int = 10, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return TinyLayerScale(num_classes=num_classes, width=width)
