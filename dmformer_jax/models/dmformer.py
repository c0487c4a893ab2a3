"""The DMFormer classifier: a `Backbone` named ``backbone`` and a `ClassifierHead`
named ``head``.

Parameter tree (docs/architecture.md): ``params/backbone/{stem, stage_i_block_j,
downsample_i}/...`` and ``params/head/{norm, fc}/...``; ``batch_stats/backbone/...``.
Dense-prediction models hold the same ``backbone`` next to their own ``decode_head``,
so a classifier's backbone loads into them by path (`dmformer_jax.models.pretrained`).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dmformer_jax.models.backbone import (  # noqa: F401  (re-exported: the old home)
    FEATURE_NAMES, FEATURE_STRIDES, Backbone, BackboneFields, Block, Downsample, Stem,
)
from dmformer_jax.models.heads import ClassifierHead

Array = jax.Array


class DMFormer(BackboneFields):
    """DMFormer image classifier: `Backbone` (``backbone``) + `ClassifierHead` (``head``).

    Every field but ``num_classes`` is the backbone's; ``method="features"`` (or
    ``features_only=True``) returns the backbone's stage maps without the head.

    Attributes:
      depths: blocks per stage.
      widths: channels per stage.
      num_classes: head outputs; 0 gives a headless backbone (pooled features).
      drop_path_rate: the last block's rate; ramps linearly from 0 over all blocks.
      layer_scale_init: initial layer-scale value.
      mlp_ratio: MLP hidden width / C.
      stem_hidden_width: stem width; None (default) is ``min(64, widths[0])``.
      expand_ratio, kernel_sizes, dilations, fusion, gate_reduction, inner_residual,
      depthwise_impl: DMA knobs (`dmformer_jax.models.dma.DMA`).
      conv_impl: how the dense convs (stem, downsampling, 1×1) are computed
        (`dmformer_jax.models.dense_conv`); the parameters are the same for all.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); norms and the gate stay float32.
      param_dtype: parameter dtype.
    """

    num_classes: int = 1000

    @nn.compact
    def __call__(self, images: Array, train: bool = False, features_only: bool = False):
        """Classify or extract features.

        Args:
          images: ``(B, H, W, 3)``, normalised; ``H`` and ``W`` divisible by 32.
          train: batch statistics for BatchNorm and active drop path
            (needs ``rngs={'drop_path': key}`` and ``mutable=['batch_stats']``).
          features_only: return the four stage maps instead of logits.

        Returns:
          logits ``(B, num_classes)`` in float32 (``(B, widths[-1])`` pooled features
          when ``num_classes == 0``), or with ``features_only`` a dict
          ``{'stage_i': (B, H/s_i, W/s_i, widths[i])}`` for strides 4, 8, 16, 32.
        """
        backbone = Backbone(**self.backbone_fields(), name="backbone")
        features = backbone(images, train=train)
        if features_only:
            return features
        head = ClassifierHead(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")
        return head(features[FEATURE_NAMES[-1]])

    def features(self, images: Array, train: bool = False) -> dict[str, Array]:
        """The four stage maps (strides 4, 8, 16, 32); see ``__call__``."""
        return self(images, train=train, features_only=True)

