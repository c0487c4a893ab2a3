"""Dense-prediction decode heads on the `Backbone` stage maps (INFERRED from mmseg;
docs/architecture.md, "Segmentation models").

Every head takes the backbone's dict ``{'stage_0'..'stage_3'}`` (strides 4, 8, 16, 32;
NHWC) and returns float32 logits. Structure follows mmsegmentation:

* `SemanticFPNHead` = mmseg's ``FPN`` neck (``neck``) + ``FPNHead``; logits at stride 4.
* `UPerHead` = mmseg's ``UPerHead`` (PPM on the last map + FPN); logits at stride 4.
* `FCNHead` = mmseg's ``FCNHead`` with one conv, the auxiliary head (UperNet) on one map.

Resizing is PyTorch's ``align_corners=False`` bilinear (`seg_ops.resize_bilinear`);
dropout is channel dropout (``Dropout2d``) with the ``'dropout'`` RNG in training.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmformer_jax.models.backbone import FEATURE_NAMES, FEATURE_STRIDES
from dmformer_jax.models.seg_ops import (
    ClassifierConv, ConvBNReLU, adaptive_avg_pool, resize_bilinear, resize_nearest,
)

Array = jax.Array


def _check_features(features: Any, needed: Sequence[str], what: str) -> list[Array]:
    if not isinstance(features, dict) or any(k not in features for k in needed):
        got = sorted(features) if isinstance(features, dict) else type(features).__name__
        raise ValueError(f"{what} needs the backbone's maps {list(needed)}, got {got}")
    return [features[k] for k in needed]


def _check_classes(num_classes: int) -> None:
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1 for a segmentation head, got {num_classes}")


def fpn_head_depth(stride: int, base_stride: int = FEATURE_STRIDES[0]) -> int:
    """Conv blocks of FPNHead's scale head for a level: ``max(1, log2(stride / base))``."""
    return max(1, int(math.log2(stride) - math.log2(base_stride)))


class FPNNeck(nn.Module):
    """mmseg's ``FPN`` neck: 1×1 laterals (``lateral_i``), nearest top-down adds,
    3×3 outputs (``fpn_i``); convs with bias, no norm, no activation, Xavier-uniform.

    ``maps`` (list, fine to coarse) -> list of ``(B, H_i, W_i, channels)``.
    """

    channels: int = 256
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, maps: Sequence[Array]) -> list[Array]:
        def conv(k, name):
            return nn.Conv(
                self.channels, (k, k), padding=((k // 2, k // 2),) * 2,
                kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros,
                dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            )

        laterals = [conv(1, f"lateral_{i}")(m.astype(self.dtype)) for i, m in enumerate(maps)]
        for i in range(len(laterals) - 1, 0, -1):
            finer = laterals[i - 1]
            laterals[i - 1] = finer + resize_nearest(laterals[i], finer.shape[1:3])
        return [conv(3, f"fpn_{i}")(lat) for i, lat in enumerate(laterals)]


class SemanticFPNHead(nn.Module):
    """Semantic FPN: `FPNNeck` (``neck``) + mmseg's ``FPNHead``.

    Per level ``i`` (stride ``s``), ``fpn_head_depth(s)`` blocks ``scale_head_i_k``
    (3×3 conv without bias, BN, ReLU, then bilinear ×2 when ``s > 4``); the levels are
    summed at stride 4, then ``cls`` (channel dropout, 1×1 conv).

    Attributes:
      num_classes: output classes.
      neck_channels: FPN neck width (mmseg 256).
      channels: FPNHead width (mmseg 128).
      dropout_rate: channel-dropout rate before the classifier (mmseg 0.1).
      dtype, param_dtype: compute and parameter dtypes (BN in float32).
    """

    num_classes: int = 150
    neck_channels: int = 256
    channels: int = 128
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], train: bool = False) -> Array:
        """Backbone maps -> float32 logits ``(B, H/4, W/4, num_classes)``."""
        _check_classes(self.num_classes)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        maps = _check_features(features, FEATURE_NAMES, "SemanticFPNHead")
        maps = FPNNeck(self.neck_channels, name="neck", **kw)(maps)
        output = None
        for i, (x, stride) in enumerate(zip(maps, FEATURE_STRIDES)):
            for k in range(fpn_head_depth(stride)):
                x = ConvBNReLU(self.channels, 3, name=f"scale_head_{i}_{k}", **kw)(x, train=train)
                if stride != FEATURE_STRIDES[0]:
                    x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
            output = x if output is None else output + resize_bilinear(x, output.shape[1:3])
        return ClassifierConv(self.num_classes, self.dropout_rate, name="cls", **kw)(output, train=train)


class PPM(nn.Module):
    """Pyramid pooling (mmseg's ``PPM``): per scale ``s``, adaptive average pool to
    ``s×s`` -> ``scale_j`` (1×1 ConvBNReLU) -> bilinear back to ``H×W``.

    ``x`` ``(B, H, W, C)`` -> list of ``(B, H, W, channels)``, one per scale.
    """

    pool_scales: Sequence[int] = (1, 2, 3, 6)
    channels: int = 512
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        outs = []
        for j, scale in enumerate(self.pool_scales):
            y = adaptive_avg_pool(x, scale)
            y = ConvBNReLU(self.channels, 1, self.dtype, self.param_dtype, name=f"scale_{j}")(y, train=train)
            outs.append(resize_bilinear(y, x.shape[1:3]))
        return outs


class UPerHead(nn.Module):
    """mmseg's ``UPerHead`` (all convs ConvBNReLU):

    * ``ppm`` (`PPM`) on stage_3; concat with stage_3 -> ``bottleneck`` (3×3);
    * ``lateral_i`` (1×1) on stage_0..2; top-down: lateral_{i-1} += bilinear(lateral_i);
    * ``fpn_i`` (3×3) on lateral 0..2 (the PPM output is used as is);
    * all bilinear to stride 4, concat -> ``fpn_bottleneck`` (3×3) -> ``cls``.

    Attributes:
      num_classes: output classes.
      channels: width of every conv (mmseg 512).
      pool_scales: PPM scales (mmseg (1, 2, 3, 6)).
      dropout_rate: channel-dropout rate before the classifier (mmseg 0.1).
      dtype, param_dtype: compute and parameter dtypes (BN in float32).
    """

    num_classes: int = 150
    channels: int = 512
    pool_scales: Sequence[int] = (1, 2, 3, 6)
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], train: bool = False) -> Array:
        """Backbone maps -> float32 logits ``(B, H/4, W/4, num_classes)``."""
        _check_classes(self.num_classes)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        maps = [m.astype(self.dtype) for m in _check_features(features, FEATURE_NAMES, "UPerHead")]
        top = maps[-1]
        pooled = PPM(tuple(int(s) for s in self.pool_scales), self.channels, name="ppm", **kw)(top, train=train)
        top = jnp.concatenate([top] + [p.astype(self.dtype) for p in pooled], axis=-1)
        laterals = [ConvBNReLU(self.channels, 1, name=f"lateral_{i}", **kw)(m, train=train)
                    for i, m in enumerate(maps[:-1])]
        laterals.append(ConvBNReLU(self.channels, 3, name="bottleneck", **kw)(top, train=train))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
        outs = [ConvBNReLU(self.channels, 3, name=f"fpn_{i}", **kw)(lat, train=train)
                for i, lat in enumerate(laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[1:3]
        fused = jnp.concatenate([resize_bilinear(o, size) for o in outs], axis=-1)
        fused = ConvBNReLU(self.channels, 3, name="fpn_bottleneck", **kw)(fused, train=train)
        return ClassifierConv(self.num_classes, self.dropout_rate, name="cls", **kw)(fused, train=train)


class FCNHead(nn.Module):
    """mmseg's ``FCNHead`` (``num_convs`` blocks, ``concat_input=False``) on one map:
    ``conv_k`` (3×3 ConvBNReLU) ... -> ``cls``. UperNet's auxiliary head.

    Attributes:
      num_classes: output classes.
      in_index: which stage map it reads (mmseg's UperNet configs: 2, stride 16).
      channels: conv width (mmseg 256).
      num_convs: conv blocks (mmseg 1).
      dropout_rate: channel-dropout rate before the classifier (mmseg 0.1).
      dtype, param_dtype: compute and parameter dtypes (BN in float32).
    """

    num_classes: int = 150
    in_index: int = 2
    channels: int = 256
    num_convs: int = 1
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], train: bool = False) -> Array:
        """Backbone maps -> float32 logits at the stride of ``stage_{in_index}``."""
        _check_classes(self.num_classes)
        if not 0 <= self.in_index < len(FEATURE_NAMES):
            raise ValueError(f"in_index must be in 0..{len(FEATURE_NAMES) - 1}, got {self.in_index}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        (x,) = _check_features(features, [FEATURE_NAMES[self.in_index]], "FCNHead")
        for k in range(self.num_convs):
            x = ConvBNReLU(self.channels, 3, name=f"conv_{k}", **kw)(x, train=train)
        return ClassifierConv(self.num_classes, self.dropout_rate, name="cls", **kw)(x, train=train)
