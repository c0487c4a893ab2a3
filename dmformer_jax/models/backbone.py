"""The DMFormer backbone: stem and four stages of DMA blocks, returning every stage map.

Layout (docs/architecture.md): stem (stride 4) -> 4 stages of MetaFormer blocks with a
3×3 stride-2 downsampling conv between stages, so the stage maps have strides 4, 8, 16,
32. Heads (classification now, dense prediction next) consume these maps; they live in
`dmformer_jax.models.heads`. All activations are NHWC.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmformer_jax.models import layers
from dmformer_jax.models.dma import DMA, DMA_KNOB_NAMES, DMAFields

Array = jax.Array
FEATURE_NAMES = ("stage_0", "stage_1", "stage_2", "stage_3")
FEATURE_STRIDES = (4, 8, 16, 32)
MAX_STEM_HIDDEN_WIDTH = 64  # spec: the stem runs at 64 channels, or widths[0] if smaller


def stem_hidden_width(widths: Sequence[int], override: int | None = None) -> int:
    """The stem's hidden width: ``override``, else ``min(64, widths[0])``.

    Derived from ``widths`` (not stored next to it) so overriding the widths never
    leaves a stale stem width behind.
    """
    return int(override) if override is not None else min(MAX_STEM_HIDDEN_WIDTH, int(widths[0]))


class Stem(nn.Module):
    """Shunted-Transformer stem, stride 4: ``(B, H, W, 3)`` -> ``(B, H/4, W/4, width)``.

    Conv7×7 s2 -> BN -> ReLU -> Conv3×3 -> BN -> ReLU -> Conv2×2 s2 -> LayerNorm.
    """

    width: int
    hidden_width: int
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = dict(impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.conv(self.hidden_width, 7, stride=2, padding=3, use_bias=False, name="conv1", **kw)(x)
        x = nn.relu(layers.batch_norm(train, self.param_dtype, name="bn1")(x)).astype(self.dtype)
        x = layers.conv(self.hidden_width, 3, padding=1, use_bias=False, name="conv2", **kw)(x)
        x = nn.relu(layers.batch_norm(train, self.param_dtype, name="bn2")(x)).astype(self.dtype)
        x = layers.conv(self.width, 2, stride=2, name="conv3", **kw)(x)
        return layers.layer_norm(self.param_dtype, name="norm")(x).astype(self.dtype)


class Downsample(nn.Module):
    """Conv3×3 s2 pad 1 -> LayerNorm: ``(B, H, W, C_in)`` -> ``(B, H/2, W/2, width)``."""

    width: int
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = layers.conv(
            self.width, 3, stride=2, padding=1, impl=self.conv_impl, name="conv",
            dtype=self.dtype, param_dtype=self.param_dtype,
        )(x)
        return layers.layer_norm(self.param_dtype, name="norm")(x).astype(self.dtype)


class Block(nn.Module):
    """MetaFormer block with DMA::

        x = x + DropPath(ls1 · DMA(LN(x)))
        x = x + DropPath(ls2 · MLP(LN(x)))
    """

    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    layer_scale_init: float = 1e-5
    dma: dict = None  # keyword arguments for DMA
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """``x``: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        channels = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop_path = layers.DropPath(self.drop_path_rate, name="drop_path")

        y = layers.layer_norm(self.param_dtype, name="norm1")(x).astype(self.dtype)
        y = DMA(**(self.dma or {}), name="token_mixer", **kw)(y, train=train)
        y = layers.LayerScale(self.layer_scale_init, self.param_dtype, name="layer_scale1")(y)
        x = x + drop_path(y, deterministic=not train)

        y = layers.layer_norm(self.param_dtype, name="norm2")(x).astype(self.dtype)
        # The MLP's two layers are 1×1 convs: they follow the DMA's dense-conv impl.
        mlp_impl = (self.dma or {}).get("conv_impl", "auto")
        y = layers.Mlp(int(self.mlp_ratio * channels), impl=mlp_impl, name="mlp", **kw)(y)
        y = layers.LayerScale(self.layer_scale_init, self.param_dtype, name="layer_scale2")(y)
        return x + drop_path(y, deterministic=not train)


class BackboneFields(DMAFields):
    """The backbone's architecture fields, declared once.

    `Backbone`, the classifier `DMFormer` and `DMFormerSegmentation` inherit them, so a
    model holding a backbone configures it with `backbone_fields` and every backbone
    knob is a field (and a config field) of every model. Not a layer by itself.
    Field meanings: `Backbone`.
    """

    depths: Sequence[int] = (2, 2, 8, 2)
    widths: Sequence[int] = (64, 128, 320, 512)
    drop_path_rate: float = 0.0
    layer_scale_init: float = 1e-5
    mlp_ratio: float = 4.0
    stem_hidden_width: int | None = None

    def backbone_fields(self) -> dict[str, Any]:
        """This module's backbone fields by name, for ``Backbone(**..., name='backbone')``."""
        return {name: getattr(self, name) for name in BACKBONE_FIELD_NAMES}


BACKBONE_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(BackboneFields) if f.name not in ("parent", "name"))


class Backbone(BackboneFields):
    """DMFormer trunk: images -> the four stage maps (strides 4, 8, 16, 32).

    Attributes:
      depths: blocks per stage.
      widths: channels per stage.
      drop_path_rate: the last block's rate; ramps linearly from 0 over all blocks.
      layer_scale_init: initial layer-scale value.
      mlp_ratio: MLP hidden width / C.
      stem_hidden_width: stem width; None derives it from ``widths`` (`stem_hidden_width`).
      expand_ratio, kernel_sizes, dilations, fusion, gate_reduction, inner_residual,
      depthwise_impl: DMA knobs (`dmformer_jax.models.dma.DMA`).
      conv_impl: how the dense convs (stem, downsampling, 1×1) are computed
        (`dmformer_jax.models.dense_conv`); the parameters are the same for all.
      out_norms: a LayerNorm ``norm_stage_i`` on each returned map, for dense heads
        (as PoolFormer/ConvNeXt do for detection/segmentation). Off for classification,
        whose head normalises the pooled last map itself; when off the norms do not
        exist, so classification parameter trees are unaffected.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); norms and the gate stay float32.
      param_dtype: parameter dtype.
    """

    out_norms: bool = False

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> dict[str, Array]:
        """Stage maps of ``images``.

        Args:
          images: ``(B, H, W, 3)``, normalised; ``H`` and ``W`` divisible by 32.
          train: batch statistics for BatchNorm and active drop path
            (needs ``rngs={'drop_path': key}`` and ``mutable=['batch_stats']``).

        Returns:
          ``{'stage_i': (B, H/s_i, W/s_i, widths[i])}`` for strides ``s_i`` = 4, 8, 16, 32,
          in ``dtype`` (float32 when ``out_norms``).
        """
        depths, widths = layers.tuple_of(self.depths), layers.tuple_of(self.widths)
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError(f"DMFormer needs 4 stages, got depths={depths}, widths={widths}")
        if images.ndim != 4:
            raise ValueError(f"DMFormer needs (B, H, W, 3) images, got shape {tuple(images.shape)}")
        height, width = images.shape[1], images.shape[2]
        if height % 32 or width % 32:
            raise ValueError(
                f"DMFormer needs image sides divisible by 32, got {height}x{width}; "
                "resize or crop the input"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dma_kw = {name: getattr(self, name) for name in DMA_KNOB_NAMES}
        dma_kw.update(kernel_sizes=layers.tuple_of(self.kernel_sizes), dilations=layers.tuple_of(self.dilations))
        total_blocks = sum(depths)
        rates = [self.drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]

        x = images.astype(self.dtype)
        hidden = stem_hidden_width(widths, self.stem_hidden_width)
        x = Stem(widths[0], hidden, self.conv_impl, name="stem", **kw)(x, train=train)
        features = {}
        block_index = 0
        for stage, (depth, width_) in enumerate(zip(depths, widths)):
            if stage > 0:
                x = Downsample(width_, self.conv_impl, name=f"downsample_{stage}", **kw)(x)
            for j in range(depth):
                x = Block(
                    mlp_ratio=self.mlp_ratio,
                    drop_path_rate=rates[block_index],
                    layer_scale_init=self.layer_scale_init,
                    dma=dma_kw,
                    name=f"stage_{stage}_block_{j}",
                    **kw,
                )(x, train=train)
                block_index += 1
            out = x
            if self.out_norms:
                out = layers.layer_norm(self.param_dtype, name=f"norm_{FEATURE_NAMES[stage]}")(x)
            features[FEATURE_NAMES[stage]] = out
        return features
