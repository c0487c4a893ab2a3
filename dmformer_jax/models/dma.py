"""DMA, Dynamic Multi-level Attention: the DMFormer token mixer.

Equations (``docs/architecture.md``; F = stated by the paper, I = our
reconstruction default, each a knob)::

    e   = Conv1x1(x)                       C -> N·C            (F; N = expand_ratio, I)
    b_i = DWConv_{k_i, d_i}(e_i)           parallel branches   (F: k=(3,5,7), d=(1,2,3))
          fusion 'split': e_i is the i-th of len(k) equal channel groups, outputs
          concatenated (I, MixConv); 'sum': every branch sees all N·C channels and
          the outputs are summed
    f   = ReLU(BatchNorm(concat(b_i)))                         (F)
    x'  = x + Conv1x1(f)                   N·C -> C            (reduce F; residual I)
    a   = Sigmoid(FC2(ReLU(FC1(GAP(x)))))  C -> C/r -> C       (F; r = gate_reduction, I)
    out = a · Conv1x1(x')                  channel gate on a 1x1 "value" (F)
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmformer_jax.models import layers

Array = jax.Array
FUSIONS = ("split", "sum")


class DMAFields(nn.Module):
    """DMA's knobs, declared once: `DMA` and the backbone's fields
    (`dmformer_jax.models.backbone.BackboneFields`) inherit them. Meanings: `DMA`."""

    expand_ratio: int = 3
    kernel_sizes: Sequence[int] = (3, 5, 7)
    dilations: Sequence[int] = (1, 2, 3)
    fusion: str = "split"
    gate_reduction: int = 4
    inner_residual: bool = True
    depthwise_impl: str = "auto"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32


# The knobs a backbone passes through to each block's DMA (its dtypes go separately).
DMA_KNOB_NAMES = (
    "expand_ratio", "kernel_sizes", "dilations", "fusion", "gate_reduction", "inner_residual",
    "depthwise_impl", "conv_impl",
)


class DMA(DMAFields):
    """Dynamic Multi-level Attention on ``(B, H, W, C)`` -> ``(B, H, W, C)``.

    Attributes:
      expand_ratio: N in ``C -> N·C`` (INFERRED default 3).
      kernel_sizes: depth-wise kernel per branch (FOUND (3, 5, 7)).
      dilations: dilation per branch (FOUND (1, 2, 3)).
      fusion: ``'split'`` (channel groups, concat) or ``'sum'`` (INFERRED 'split').
      gate_reduction: r in the gate's ``C -> C/r -> C`` (INFERRED 4).
      inner_residual: add ``x`` after the reduce conv (INFERRED True).
      depthwise_impl: see `dmformer_jax.models.depthwise`.
      conv_impl: how the 1×1 convs are computed (`dmformer_jax.models.dense_conv`).
    """

    def _check(self, channels: int) -> None:
        kernel_sizes, dilations = tuple(self.kernel_sizes), tuple(self.dilations)
        if len(kernel_sizes) != len(dilations):
            raise ValueError(
                f"DMA needs one dilation per kernel size, got kernel_sizes={kernel_sizes} "
                f"and dilations={dilations}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"DMA fusion must be one of {FUSIONS}, got {self.fusion!r}")
        expanded = self.expand_ratio * channels
        if self.fusion == "split" and expanded % len(kernel_sizes):
            raise ValueError(
                f"fusion='split' needs expand_ratio*C={expanded} divisible by the "
                f"{len(kernel_sizes)} branches; change expand_ratio or use fusion='sum'"
            )
        if channels // self.gate_reduction < 1:
            raise ValueError(
                f"gate_reduction={self.gate_reduction} leaves no hidden units for C={channels}"
            )

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``x``: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        channels = x.shape[-1]
        self._check(channels)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv_kw = dict(impl=self.conv_impl, **kw)
        expanded = self.expand_ratio * channels
        e = layers.conv(expanded, 1, name="expand", **conv_kw)(x)

        num_branches = len(self.kernel_sizes)
        if self.fusion == "split":
            inputs = jnp.split(e, num_branches, axis=-1)
        else:
            inputs = [e] * num_branches
        branches = [
            layers.depthwise_conv(
                inp.shape[-1], k, dilation=d, impl=self.depthwise_impl, name=f"branch_{i}", **kw
            )(inp)
            for i, (inp, k, d) in enumerate(zip(inputs, self.kernel_sizes, self.dilations))
        ]
        f = jnp.concatenate(branches, axis=-1) if self.fusion == "split" else sum(branches)
        f = layers.batch_norm(train, self.param_dtype, name="bn")(f)
        f = nn.relu(f).astype(self.dtype)
        reduced = layers.conv(channels, 1, name="reduce", **conv_kw)(f)
        x_prime = x + reduced if self.inner_residual else reduced

        # The gate runs in float32: a per-channel sigmoid of a global mean is cheap
        # and sensitive to bfloat16 rounding.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        hidden = max(1, channels // self.gate_reduction)
        gate_kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
        a = layers.dense(hidden, name="gate_fc1", **gate_kw)(pooled)
        a = layers.dense(channels, name="gate_fc2", **gate_kw)(nn.relu(a))
        a = nn.sigmoid(a)

        value = layers.conv(channels, 1, name="value", **conv_kw)(x_prime)
        return (a[:, None, None, :] * value).astype(self.dtype)
