"""Task heads on the `Backbone` stage maps (docs/architecture.md).

`ClassifierHead` reads the last map; the dense-prediction heads (Semantic FPN, UperNet,
the auxiliary FCN head) read all four and live in `dmformer_jax.models.seg_heads`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmformer_jax.models import layers

Array = jax.Array


class ClassifierHead(nn.Module):
    """Global average pool -> LayerNorm (``norm``) -> Dense (``fc``).

    Attributes:
      num_classes: outputs; 0 returns the normalised pooled features (no ``fc``).
      dtype: compute dtype of ``fc``; pooling and the norm run in float32.
      param_dtype: parameter dtype.
    """

    num_classes: int = 1000
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``x``: the last stage map ``(B, H, W, C)`` -> float32 logits ``(B, num_classes)``
        (``(B, C)`` pooled features when ``num_classes == 0``)."""
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        # Pool in float32: a bfloat16 mean over 49+ positions loses the low bits.
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        pooled = layers.layer_norm(self.param_dtype, name="norm")(pooled)
        if self.num_classes == 0:
            return pooled
        logits = layers.dense(self.num_classes, name="fc", dtype=self.dtype, param_dtype=self.param_dtype)(
            pooled.astype(self.dtype)
        )
        return logits.astype(jnp.float32)
