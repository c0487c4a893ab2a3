"""Resizing and pooling with PyTorch's semantics, and mmseg's ``ConvModule``, for the
dense-prediction heads (`dmformer_jax.models.seg_heads`). All NHWC.

* `resize_bilinear`: ``F.interpolate(mode='bilinear', align_corners=False)`` (no
  antialiasing, also when shrinking).
* `resize_nearest`: ``F.interpolate(mode='nearest')`` (source index ``floor(i·in/out)``).
* `adaptive_avg_pool`: ``nn.AdaptiveAvgPool2d(s)``; bin ``i`` covers
  ``[floor(i·H/s), ceil((i+1)·H/s))``, so bins overlap or differ in size when ``s``
  does not divide ``H`` (and exist when ``s > H``).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dmformer_jax.models import layers

Array = jax.Array

# mmcv's ConvModule initialises its conv with kaiming_init (fan_out, normal, ReLU gain).
conv_bn_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# mmseg's decode heads initialise the classifier conv (conv_seg) with normal(std=0.01).
classifier_kernel_init = nn.initializers.normal(stddev=0.01)


def resize_bilinear(x: Array, size: tuple[int, int]) -> Array:
    """``x`` ``(B, H, W, C)`` -> ``(B, h, w, C)``, PyTorch bilinear with ``align_corners=False``.

    ``antialias=False`` makes shrinking sample two neighbours, as PyTorch does
    (JAX's default would average over the whole footprint).
    """
    h, w = int(size[0]), int(size[1])
    if (x.shape[1], x.shape[2]) == (h, w):
        return x
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method="bilinear", antialias=False)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # PyTorch 'nearest': src = min(floor(dst * (in / out)), in - 1), scale in float32.
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
    """``x`` ``(B, H, W, C)`` -> ``(B, h, w, C)``, PyTorch ``mode='nearest'``."""
    h, w = int(size[0]), int(size[1])
    if (x.shape[1], x.shape[2]) == (h, w):
        return x
    x = jnp.take(x, jnp.asarray(_nearest_index(x.shape[1], h)), axis=1)
    return jnp.take(x, jnp.asarray(_nearest_index(x.shape[2], w)), axis=2)


def adaptive_bins(n: int, s: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive-pool bins of a length-``n`` axis into ``s``: ``[(start, end)]``."""
    return [((i * n) // s, math.ceil((i + 1) * n / s)) for i in range(s)]


def _pool_matrix(n: int, s: int) -> np.ndarray:
    m = np.zeros((s, n), np.float32)
    for i, (start, end) in enumerate(adaptive_bins(n, s)):
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, output_size: int) -> Array:
    """``nn.AdaptiveAvgPool2d(s)`` on NHWC: ``(B, H, W, C)`` -> ``(B, s, s, C)``, in float32.

    A bin is a rectangle, so its mean is the row-bin average of column-bin averages:
    two small averaging matrices (one per axis) built from `adaptive_bins`.
    """
    s = int(output_size)
    if s < 1:
        raise ValueError(f"pool scales must be >= 1, got {s}")
    rows = jnp.asarray(_pool_matrix(x.shape[1], s))
    cols = jnp.asarray(_pool_matrix(x.shape[2], s))
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x.astype(jnp.float32), cols,
                      precision=jax.lax.Precision.HIGHEST)


class ConvBNReLU(nn.Module):
    """mmcv's ``ConvModule`` with BN and ReLU: ``conv`` (no bias) -> ``bn`` -> ReLU.

    Attributes:
      features: output channels.
      kernel_size: square kernel; padding ``kernel_size // 2`` keeps ``H×W``.
      dtype: compute dtype of the conv (BN runs in float32).
      param_dtype: parameter dtype.
    """

    features: int
    kernel_size: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``x`` ``(B, H, W, C_in)`` -> ``(B, H, W, features)`` in ``dtype``."""
        pad = self.kernel_size // 2
        x = nn.Conv(
            self.features, (self.kernel_size,) * 2, padding=((pad, pad), (pad, pad)), use_bias=False,
            kernel_init=conv_bn_kernel_init, dtype=self.dtype, param_dtype=self.param_dtype, name="conv",
        )(x.astype(self.dtype))
        x = layers.batch_norm(train, self.param_dtype, name="bn")(x)
        return nn.relu(x).astype(self.dtype)


class ClassifierConv(nn.Module):
    """mmseg's ``cls_seg``: channel dropout (Dropout2d) then a 1×1 conv with bias
    (``conv``) to ``num_classes``; returns float32 logits.

    Dropout drops whole channels per sample (mask ``(B, 1, 1, C)``), scaled by
    ``1/(1-rate)``, only with ``train=True`` (needs ``rngs={'dropout': key}``).
    """

    num_classes: int
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), name="dropout")(x, deterministic=not train)
        x = nn.Conv(
            self.num_classes, (1, 1), kernel_init=classifier_kernel_init, bias_init=nn.initializers.zeros,
            dtype=self.dtype, param_dtype=self.param_dtype, name="conv",
        )(x.astype(self.dtype))
        return x.astype(jnp.float32)
