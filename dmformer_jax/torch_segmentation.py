"""DMFormer segmentation in PyTorch: the independent peer of
`dmformer_jax.models.segmentation` for parity tests and benchmarks.

Written from mmsegmentation's structure (``FPN`` neck + ``FPNHead``, ``UPerHead`` with
``PPM``, ``FCNHead``), using PyTorch's own ``nn.AdaptiveAvgPool2d``, ``F.interpolate``
(bilinear ``align_corners=False``; nearest in the FPN neck) and ``nn.Dropout2d``. Only
the module names follow the Flax tree, so `dmformer_jax.checkpoint.convert` maps
parameters 1:1 (``decode_head.ppm.scale_3.conv.weight`` is Flax
``params/decode_head/ppm/scale_3/conv/kernel``). NCHW throughout.

Imports torch (the ``[test]``/``[bench]`` extras); nothing else in the package imports it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dmformer_jax.models.registry import get_variant
from dmformer_jax.torch_model import BackboneTorch, batch_norm

STRIDES = (4, 8, 16, 32)


def _bilinear(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Module):
    """mmcv ``ConvModule(norm_cfg=BN, act_cfg=ReLU)``: ``conv`` (bias off) -> ``bn`` -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = batch_norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ClsSeg(nn.Module):
    """mmseg ``BaseDecodeHead.cls_seg``: ``Dropout2d`` -> 1×1 ``conv`` with bias."""

    def __init__(self, cin: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(x))


class FPNNeckTorch(nn.Module):
    """mmseg ``FPN(in_channels, out_channels, num_outs=4)``: no norm, no activation."""

    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        self.levels = len(in_channels)
        for i, cin in enumerate(in_channels):
            self.add_module(f"lateral_{i}", nn.Conv2d(cin, channels, 1))
            self.add_module(f"fpn_{i}", nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [getattr(self, f"lateral_{i}")(x) for i, x in enumerate(inputs)]
        for i in range(self.levels - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        return [getattr(self, f"fpn_{i}")(lat) for i, lat in enumerate(laterals)]


class SemanticFPNHeadTorch(nn.Module):
    """``neck`` (FPN) + mmseg ``FPNHead(feature_strides=(4, 8, 16, 32))``."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, neck_channels: int = 256,
                 channels: int = 128, dropout: float = 0.1):
        super().__init__()
        self.neck = FPNNeckTorch(in_channels, neck_channels)
        self.scale_heads = []
        for i, stride in enumerate(STRIDES):
            length = max(1, int(math.log2(stride) - math.log2(STRIDES[0])))
            ops = []
            for k in range(length):
                conv = ConvModule(neck_channels if k == 0 else channels, channels, 3)
                self.add_module(f"scale_head_{i}_{k}", conv)
                ops.append(conv)
                if stride != STRIDES[0]:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(ops)
        self.cls = ClsSeg(channels, num_classes, dropout)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.neck(inputs)
        out = None
        for i, ops in enumerate(self.scale_heads):
            y = x[i]
            for op in ops:
                y = op(y)
            out = y if out is None else out + _bilinear(y, out.shape[2:])
        return self.cls(out)


class PPMTorch(nn.Module):
    """mmseg ``PPM``: AdaptiveAvgPool2d(s) -> ``scale_j`` (1×1 ConvModule) -> bilinear back."""

    def __init__(self, pool_scales: Sequence[int], cin: int, channels: int):
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        for j in range(len(self.pool_scales)):
            self.add_module(f"scale_{j}", ConvModule(cin, channels, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [
            _bilinear(getattr(self, f"scale_{j}")(nn.AdaptiveAvgPool2d(s)(x)), x.shape[2:])
            for j, s in enumerate(self.pool_scales)
        ]


class UPerHeadTorch(nn.Module):
    """mmseg ``UPerHead(in_channels, channels, pool_scales)``."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        in_channels = tuple(in_channels)
        self.ppm = PPMTorch(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        for i, cin in enumerate(in_channels[:-1]):
            self.add_module(f"lateral_{i}", ConvModule(cin, channels, 1))
            self.add_module(f"fpn_{i}", ConvModule(channels, channels, 3))
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.cls = ClsSeg(channels, num_classes, dropout)
        self.levels = len(in_channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        top = inputs[-1]
        laterals = [getattr(self, f"lateral_{i}")(inputs[i]) for i in range(self.levels - 1)]
        laterals.append(self.bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(self.levels - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _bilinear(laterals[i], laterals[i - 1].shape[2:])
        outs = [getattr(self, f"fpn_{i}")(laterals[i]) for i in range(self.levels - 1)]
        outs.append(laterals[-1])
        outs = [outs[0]] + [_bilinear(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.cls(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHeadTorch(nn.Module):
    """mmseg ``FCNHead(num_convs, concat_input=False, kernel_size=3)`` on ``inputs[in_index]``."""

    def __init__(self, in_channels: int, num_classes: int, in_index: int = 2, channels: int = 256,
                 num_convs: int = 1, dropout: float = 0.1):
        super().__init__()
        self.in_index, self.num_convs = in_index, num_convs
        for k in range(num_convs):
            self.add_module(f"conv_{k}", ConvModule(in_channels if k == 0 else channels, channels, 3))
        self.cls = ClsSeg(channels, num_classes, dropout)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = inputs[self.in_index]
        for k in range(self.num_convs):
            x = getattr(self, f"conv_{k}")(x)
        return self.cls(x)


class DMFormerSegmentationTorch(nn.Module):
    """``backbone`` (out_norms) + ``decode_head`` (+ ``auxiliary_head``), NCHW.

    ``forward`` returns logits ``(B, K, H/4, W/4)``; in training mode with an auxiliary
    head, ``{'logits': ..., 'aux_logits': (B, K, H/16, W/16)}`` as the Flax model does.
    """

    def __init__(self, head: str = "fpn", num_classes: int = 150, channels: int | None = None,
                 neck_channels: int = 256, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 dropout_rate: float = 0.1, aux_head: bool | None = None, aux_in_index: int = 2,
                 aux_channels: int = 256, **backbone_kwargs: Any):
        super().__init__()
        self.backbone = BackboneTorch(**backbone_kwargs, out_norms=True)
        widths = self.backbone.widths
        if head == "fpn":
            self.decode_head = SemanticFPNHeadTorch(widths, num_classes, neck_channels, channels or 128, dropout_rate)
        elif head == "upernet":
            self.decode_head = UPerHeadTorch(widths, num_classes, channels or 512, pool_scales, dropout_rate)
        else:
            raise ValueError(f"unknown segmentation head {head!r}")
        if (head == "upernet") if aux_head is None else aux_head:
            self.auxiliary_head = FCNHeadTorch(widths[aux_in_index], num_classes, aux_in_index, aux_channels,
                                               1, dropout_rate)
        else:
            self.auxiliary_head = None

    def forward(self, x: torch.Tensor):
        features = self.backbone(x)
        inputs = [features[f"stage_{i}"] for i in range(4)]
        logits = self.decode_head(inputs)
        if self.training and self.auxiliary_head is not None:
            return {"logits": logits, "aux_logits": self.auxiliary_head(inputs)}
        return logits


def create_torch_segmentation_model(backbone_name: str, head: str = "fpn", num_classes: int = 150,
                                    **overrides: Any) -> DMFormerSegmentationTorch:
    """The PyTorch twin of ``create_segmentation_model(backbone_name, head, num_classes, ...)``
    (architecture overrides only; not ``dtype``/``*_impl``/``aux_loss_weight``)."""
    kwargs = get_variant(backbone_name).model_kwargs()
    kwargs.update(overrides)
    return DMFormerSegmentationTorch(head=head, num_classes=num_classes, **kwargs)
