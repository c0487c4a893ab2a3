"""DMFormer segmentation models: a `Backbone` (``backbone``, with ``out_norms``) + a decode
head (``decode_head``) + for UperNet an auxiliary FCN head (``auxiliary_head``).

The ``backbone`` subtree is the classifier's plus ``norm_stage_i``, so an ImageNet
checkpoint loads by path (`dmformer_jax.models.pretrained.merge_pretrained`); the
norms and both heads stay at init and are listed as missing.

Outputs (`DMFormerSegmentation.__call__`):

* ``train=False``, or a model without an auxiliary head: float32 logits
  ``(B, H/4, W/4, num_classes)``;
* ``train=True`` with an auxiliary head (UperNet by default): a dict
  ``{'logits': (B, H/4, W/4, K), 'aux_logits': (B, H/16, W/16, K)}`` (the aux map at
  its stage's stride; the loss resizes both to the labels and weighs the aux term
  by ``aux_loss_weight``, mmseg 0.4). `split_outputs` reads either form.

Training needs ``rngs={'drop_path': k1, 'dropout': k2}`` and ``mutable=['batch_stats']``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from dmformer_jax.models.backbone import FEATURE_STRIDES, Backbone, BackboneFields
from dmformer_jax.models.seg_heads import FCNHead, SemanticFPNHead, UPerHead

Array = jax.Array

HEADS = ("fpn", "upernet")
DEFAULT_CHANNELS = {"fpn": 128, "upernet": 512}  # mmseg's fpn_r50 / upernet configs


class DMFormerSegmentation(BackboneFields):
    """Semantic segmentation: `Backbone` + `SemanticFPNHead` or `UPerHead` (+ `FCNHead`).

    Backbone attributes are `DMFormer`'s (depths ... conv_impl); the backbone always
    runs with ``out_norms=True``. Head attributes (INFERRED from mmseg's configs):

    Attributes:
      head: ``'fpn'`` (Semantic FPN) or ``'upernet'``.
      num_classes: classes (ADE20K: 150).
      channels: decode-head width; None is 128 for ``fpn``, 512 for ``upernet``.
      neck_channels: Semantic FPN's neck width (256; unused by UperNet).
      pool_scales: UperNet's PPM scales (1, 2, 3, 6).
      dropout_rate: channel dropout before each classifier (0.1).
      aux_head: whether the auxiliary FCN head exists; None is True for ``upernet``,
        False for ``fpn``.
      aux_in_index: the stage map the auxiliary head reads (2, stride 16, as mmseg).
      aux_channels: auxiliary head width (256).
      aux_loss_weight: weight of the auxiliary loss (0.4); not used by the model, read
        by the segmentation task.
    """

    head: str = "fpn"
    num_classes: int = 150
    channels: int | None = None
    neck_channels: int = 256
    pool_scales: Sequence[int] = (1, 2, 3, 6)
    dropout_rate: float = 0.1
    aux_head: bool | None = None
    aux_in_index: int = 2
    aux_channels: int = 256
    aux_loss_weight: float = 0.4

    @property
    def has_aux_head(self) -> bool:
        return (self.head == "upernet") if self.aux_head is None else bool(self.aux_head)

    @nn.compact
    def __call__(self, images: Array, train: bool = False):
        """Segment ``images`` ``(B, H, W, 3)`` (sides divisible by 32); see the module doc."""
        if self.head not in HEADS:
            raise ValueError(f"unknown segmentation head {self.head!r}; valid heads: {', '.join(HEADS)}")
        features = Backbone(**self.backbone_fields(), out_norms=True, name="backbone")(images, train=train)
        kw = dict(num_classes=self.num_classes, dropout_rate=self.dropout_rate,
                  dtype=self.dtype, param_dtype=self.param_dtype)
        channels = DEFAULT_CHANNELS[self.head] if self.channels is None else int(self.channels)
        if self.head == "fpn":
            decode = SemanticFPNHead(neck_channels=self.neck_channels, channels=channels, name="decode_head", **kw)
        else:
            decode = UPerHead(channels=channels, pool_scales=tuple(int(s) for s in self.pool_scales),
                              name="decode_head", **kw)
        logits = decode(features, train=train)
        if not self.has_aux_head:
            return logits
        if not (train or self.is_initializing()):
            return logits  # the auxiliary head only serves the training loss
        aux = FCNHead(in_index=self.aux_in_index, channels=self.aux_channels, name="auxiliary_head", **kw)
        aux_logits = aux(features, train=train)
        if not train:
            return logits
        return {"logits": logits, "aux_logits": aux_logits}


def split_outputs(outputs: Any) -> tuple[Array, Array | None]:
    """``(logits, aux_logits or None)`` from either form `DMFormerSegmentation` returns."""
    if isinstance(outputs, dict):
        return outputs["logits"], outputs.get("aux_logits")
    return outputs, None


OUTPUT_STRIDE = FEATURE_STRIDES[0]  # the main logits' stride

