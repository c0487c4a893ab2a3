"""DMFormer in PyTorch: the independent peer for numerics tests and benchmarks.

Written from the architecture spec (docs/architecture.md), not translated from the
Flax code; only the module names follow the Flax tree so that `dmformer_jax.checkpoint.convert`
maps parameters 1:1 (``backbone.stage_2_block_3.token_mixer.branch_1.weight`` is Flax
``params/backbone/stage_2_block_3/token_mixer/branch_1/kernel``; ``head.fc.weight`` is
``params/head/fc/kernel``).

Layout is PyTorch's NCHW: depth-wise convs are ``nn.Conv2d(groups=C)`` with padding
``d·(k−1)/2``; BatchNorm2d eps 1e-5, momentum 0.1; LayerNorm eps 1e-6 over channels;
exact GELU. The MLP, gate and head are ``nn.Linear`` on channels-last views.

This module imports torch, which is only in the ``[test]``/``[bench]`` extras; nothing
else in the package imports it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dmformer_jax.models.backbone import stem_hidden_width as stem_hidden_width_of  # the spec's rule, one place
from dmformer_jax.models.registry import get_variant

LAYER_NORM_EPS = 1e-6
BATCH_NORM_EPS = 1e-5
BATCH_NORM_MOMENTUM = 0.1


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor ``(B, C, H, W)``."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM)


class DropPath(nn.Module):
    """Per-sample stochastic depth (identity in eval mode or at rate 0)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class DMA(nn.Module):
    """Dynamic Multi-level Attention, NCHW ``(B, C, H, W)`` -> same.

    ``e = expand(x)``; depth-wise branches (k_i, d_i) on channel groups ('split') or
    on all of ``e`` ('sum'); ``f = ReLU(BN(fused))``; ``x' = x + reduce(f)``;
    ``a = sigmoid(fc2(relu(fc1(GAP(x)))))``; ``out = a · value(x')``.
    """

    def __init__(
        self,
        channels: int,
        expand_ratio: int = 3,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        dilations: Sequence[int] = (1, 2, 3),
        fusion: str = "split",
        gate_reduction: int = 4,
        inner_residual: bool = True,
    ):
        super().__init__()
        expanded = expand_ratio * channels
        self.fusion = fusion
        self.inner_residual = inner_residual
        self.num_branches = len(kernel_sizes)
        branch_channels = expanded // self.num_branches if fusion == "split" else expanded
        self.expand = nn.Conv2d(channels, expanded, 1)
        for i, (k, d) in enumerate(zip(kernel_sizes, dilations)):
            conv = nn.Conv2d(
                branch_channels, branch_channels, k, padding=d * (k - 1) // 2,
                dilation=d, groups=branch_channels,
            )
            self.add_module(f"branch_{i}", conv)
        self.bn = batch_norm(expanded)
        self.reduce = nn.Conv2d(expanded, channels, 1)
        hidden = max(1, channels // gate_reduction)
        self.gate_fc1 = nn.Linear(channels, hidden)
        self.gate_fc2 = nn.Linear(hidden, channels)
        self.value = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.expand(x)
        branches = [getattr(self, f"branch_{i}") for i in range(self.num_branches)]
        if self.fusion == "split":
            parts = torch.chunk(e, self.num_branches, dim=1)
            f = torch.cat([conv(p) for conv, p in zip(branches, parts)], dim=1)
        else:
            f = sum(conv(e) for conv in branches)
        f = F.relu(self.bn(f))
        reduced = self.reduce(f)
        x_prime = x + reduced if self.inner_residual else reduced
        a = torch.sigmoid(self.gate_fc2(F.relu(self.gate_fc1(x.mean(dim=(2, 3))))))
        return a[:, :, None, None] * self.value(x_prime)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` on an NCHW tensor."""

    def __init__(self, channels: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[:, None, None]


class Mlp(nn.Module):
    """Linear(C -> hidden) -> exact GELU -> Linear(hidden -> C) on channels-last input."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """``x += DropPath(ls1·DMA(LN(x)))``; ``x += DropPath(ls2·MLP(LN(x)))`` (NCHW)."""

    def __init__(self, channels: int, mlp_ratio: float, drop_path: float, layer_scale_init: float, dma: dict):
        super().__init__()
        self.norm1 = LayerNorm2d(channels)
        self.token_mixer = DMA(channels, **dma)
        self.layer_scale1 = LayerScale(channels, layer_scale_init)
        self.norm2 = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(channels, int(mlp_ratio * channels))
        self.layer_scale2 = LayerScale(channels, layer_scale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale1(self.token_mixer(self.norm1(x))))
        y = self.mlp(self.norm2(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + self.drop_path(self.layer_scale2(y))


class Stem(nn.Module):
    """Conv7×7 s2 p3 -> BN -> ReLU -> Conv3×3 p1 -> BN -> ReLU -> Conv2×2 s2 -> LN."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, hidden, 7, stride=2, padding=3, bias=False)
        self.bn1 = batch_norm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.bn2 = batch_norm(hidden)
        self.conv3 = nn.Conv2d(hidden, width, 2, stride=2)
        self.norm = LayerNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.norm(self.conv3(x))


class Downsample(nn.Module):
    """Conv3×3 s2 p1 -> LN."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.norm = LayerNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class BackboneTorch(nn.Module):
    """DMFormer trunk, NCHW images ``(B, 3, H, W)`` -> the four NCHW stage maps.

    ``out_norms`` adds ``norm_stage_i`` (LayerNorm over channels) on each returned map,
    as the Flax `Backbone` does for dense heads.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 8, 2),
        widths: Sequence[int] = (64, 128, 320, 512),
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-5,
        mlp_ratio: float = 4.0,
        stem_hidden_width: int | None = None,
        expand_ratio: int = 3,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        dilations: Sequence[int] = (1, 2, 3),
        fusion: str = "split",
        gate_reduction: int = 4,
        inner_residual: bool = True,
        out_norms: bool = False,
    ):
        super().__init__()
        self.depths, self.widths = tuple(depths), tuple(widths)
        self.out_norms = out_norms
        dma = dict(
            expand_ratio=expand_ratio, kernel_sizes=tuple(kernel_sizes), dilations=tuple(dilations),
            fusion=fusion, gate_reduction=gate_reduction, inner_residual=inner_residual,
        )
        total = sum(self.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stem = Stem(self.widths[0], stem_hidden_width_of(self.widths, stem_hidden_width))
        index = 0
        for stage, (depth, width) in enumerate(zip(self.depths, self.widths)):
            if stage > 0:
                self.add_module(f"downsample_{stage}", Downsample(self.widths[stage - 1], width))
            for j in range(depth):
                block = Block(width, mlp_ratio, rates[index], layer_scale_init, dma)
                self.add_module(f"stage_{stage}_block_{j}", block)
                index += 1
            if out_norms:
                self.add_module(f"norm_stage_{stage}", LayerNorm2d(width))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four NCHW stage maps ``stage_0..stage_3`` (strides 4, 8, 16, 32)."""
        x = self.stem(x)
        features = {}
        for stage, depth in enumerate(self.depths):
            if stage > 0:
                x = getattr(self, f"downsample_{stage}")(x)
            for j in range(depth):
                x = getattr(self, f"stage_{stage}_block_{j}")(x)
            features[f"stage_{stage}"] = getattr(self, f"norm_stage_{stage}")(x) if self.out_norms else x
        return features


class ClassifierHeadTorch(nn.Module):
    """Global average pool -> LayerNorm (``norm``) -> Linear (``fc``; identity when 0 classes)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: the last NCHW stage map ``(B, C, H, W)`` -> ``(B, num_classes)``."""
        return self.fc(self.norm(x.mean(dim=(2, 3))))


class DMFormerTorch(nn.Module):
    """DMFormer classifier, NCHW images ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.

    ``backbone`` (`BackboneTorch`) + ``head`` (`ClassifierHeadTorch`), as in Flax.
    """

    def __init__(self, num_classes: int = 1000, **backbone_kwargs: Any):
        super().__init__()
        self.backbone = BackboneTorch(**backbone_kwargs)
        self.head = ClassifierHeadTorch(self.backbone.widths[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four NCHW stage maps ``stage_0..stage_3`` (strides 4, 8, 16, 32)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)[f"stage_{len(self.backbone.depths) - 1}"]
        return self.head(x)


def create_torch_model(name: str, num_classes: int = 1000, **overrides: Any) -> DMFormerTorch:
    """The PyTorch twin of ``dmformer_jax.create_model(name, num_classes, **overrides)``.

    Accepts the architecture overrides (not ``dtype``/``depthwise_impl``/``conv_impl``, which are
    JAX-only).
    """
    kwargs = get_variant(name).model_kwargs()
    kwargs.update(overrides)
    return DMFormerTorch(num_classes=num_classes, **kwargs)
