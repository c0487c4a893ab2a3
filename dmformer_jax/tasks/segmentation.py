"""Semantic segmentation (ADE20K, `dmformer_seg_shapes`): per-pixel cross-entropy,
mIoU / aAcc / mAcc from per-class area counts summed over the whole eval split.

Batches come from `dmformer_jax.data.segmentation` (the task's data module):

* train: ``image`` ``(B, S, S, 3)``, ``label`` int32 ``(B, S, S)`` (255 = ignore);
* eval: ``image`` ``(B, Hb, Wb, 3)`` (one shape per bucket), ``image_hw`` int32
  ``(B, 2)``, ``label`` int32 ``(B, Hl, Wl)`` at the original size (padded with 255),
  ``label_hw`` int32 ``(B, 2)``, ``mask`` bool ``(B,)``.

The model is `DMFormerSegmentation` (Semantic FPN or UperNet); in training a model
with an auxiliary head returns ``{'logits', 'aux_logits'}`` (`split_outputs`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dmformer_jax.errors import ConfigError
from dmformer_jax.metrics import segmentation as seg_metrics
from dmformer_jax.models.seg_ops import resize_bilinear
from dmformer_jax.models.segmentation import split_outputs
from dmformer_jax.tasks.base import BatchSpec, Metrics, Task

IGNORE_INDEX = seg_metrics.IGNORE_INDEX
# Per-class IoU goes to metrics.jsonl as scalar keys (the metrics writer takes floats).
CLASS_IOU_PREFIX = "IoU_"


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX):
    """``(mean loss, pixel accuracy)`` of ``logits`` ``(B, h, w, K)`` against integer
    ``labels`` ``(B, H, W)``: the logits are resized bilinearly to ``(H, W)``
    (align_corners=False, no antialiasing: PyTorch's ``F.interpolate``), the
    cross-entropy is averaged over the pixels whose label is not ``ignore_index``
    (mmseg's ``avg_non_ignore=True``; mmseg v0.x averaged over all pixels). Computed
    in float32. Both are 0 when every pixel is ignored."""
    logits = resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    loss = jnp.sum(jnp.where(valid, ce, 0.0)) / count
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & valid) / count
    return loss, correct.astype(jnp.float32)


class SegmentationTask(Task):
    """`DMFormerSegmentation` (``config.model.head``: ``'fpn'`` | ``'upernet'``) over
    ``info.num_classes`` classes; ignore index 255."""

    name = "segmentation"
    train_keys = ("image", "label")
    eval_keys = ("image", "image_hw", "label", "label_hw", "mask")

    def __init__(self) -> None:
        self.aux_loss_weight = 0.4
        self.num_classes: int | None = None

    def data_module(self) -> Any:
        import dmformer_jax.data.segmentation as seg_data  # late: it imports TensorFlow

        return seg_data

    # --- model ------------------------------------------------------------------

    def build_model(self, config: ml_collections.ConfigDict, info: Any) -> nn.Module:
        from dmformer_jax.models.registry import create_segmentation_model
        from dmformer_jax.train import state as state_lib  # late: train imports the tasks

        if config.model.get("head") is None:
            raise ConfigError(
                "config.model.head is not set: a segmentation config needs 'fpn' or 'upernet' "
                "(start from configs/seg_common.py)"
            )
        model = state_lib.build_model(config, int(info.num_classes), create=create_segmentation_model)
        self.aux_loss_weight = float(model.aux_loss_weight)
        self.num_classes = int(info.num_classes)
        return model

    # --- inside the jitted steps -------------------------------------------------

    def loss(self, outputs: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        """Decode-head cross-entropy + ``aux_loss_weight`` × the auxiliary head's (when
        the model returns one), each on logits resized to the label crop, averaged over
        non-ignored pixels (`pixel_cross_entropy`). Metrics: ``pixel_acc`` of the decode
        head, and ``aux_loss`` (unweighted) when there is an auxiliary head."""
        logits, aux_logits = split_outputs(outputs)
        labels = batch["label"]
        loss, acc = pixel_cross_entropy(logits, labels)
        metrics = {"pixel_acc": acc}
        if aux_logits is not None:
            aux_loss, _ = pixel_cross_entropy(aux_logits, labels)
            metrics["aux_loss"] = aux_loss
            loss = loss + self.aux_loss_weight * aux_loss
        return loss, metrics

    def eval_sums(self, outputs: Any, batch: Mapping[str, jax.Array], mask: jax.Array) -> Metrics:
        """Per-class ``intersection``/``union``/``pred_area``/``label_area`` (int32
        ``(K,)``) of the argmax of the logits resized to each image's original size
        (`metrics.segmentation.predicted_classes`, also behind `dmformer_jax.segment`),
        over non-ignored pixels of real examples; and ``num_images``."""
        logits, _ = split_outputs(outputs)
        num_classes = logits.shape[-1]
        image, label = batch["image"], batch["label"]
        pred = seg_metrics.predicted_classes(
            logits, batch["image_hw"], batch["label_hw"], image.shape[1:3], label.shape[1:3]
        )
        valid = jnp.broadcast_to(mask[:, None, None] > 0, label.shape)
        counts = seg_metrics.area_counts(pred, label, num_classes, IGNORE_INDEX, valid=valid)
        return {**counts, "num_images": jnp.sum(mask)}

    def finalize(self, totals: Mapping[str, np.ndarray]) -> dict[str, float]:
        """``mIoU``, ``aAcc``, ``mAcc`` (mmseg's `total_area_to_metrics` on the int64
        totals), ``num_images``, and each class's IoU as ``IoU_<k>`` (NaN where the
        class is in neither labels nor predictions)."""
        counts = {k: np.asarray(totals[k]).astype(np.int64) for k in seg_metrics.KEYS}
        m = seg_metrics.metrics_from_totals(counts)
        out = {"mIoU": m["mIoU"], "aAcc": m["aAcc"], "mAcc": m["mAcc"], "num_images": float(totals["num_images"])}
        width = len(str(len(m["IoU"]) - 1))
        for k, iou in enumerate(m["IoU"]):
            out[f"{CLASS_IOU_PREFIX}{k:0{width}d}"] = float(iou)
        return out

    # --- batches -----------------------------------------------------------------

    def eval_target_spec(self, config: ml_collections.ConfigDict, batch_size: int) -> BatchSpec:
        size = int(config.data.eval_image_size or config.data.image_size)
        return {
            "image_hw": ((batch_size, 2), np.int32),
            "label": ((batch_size, size, size), np.int32),
            "label_hw": ((batch_size, 2), np.int32),
        }

    def eval_batch_spec(self, config: ml_collections.ConfigDict, batch_size: int, image_dtype: Any) -> BatchSpec | None:
        """The first bucket of the eval split (`eval_shapes`): the trainer compiles it
        ahead of time; the other buckets (ADE20K at 512: up to 31) compile at their
        first batch."""
        shapes = self.data_module().eval_shapes(config)
        if not shapes:
            return None
        (hb, wb), (hl, wl) = shapes[0]
        return {
            self.input_key: ((batch_size, hb, wb, 3), image_dtype),
            "image_hw": ((batch_size, 2), np.int32),
            "label": ((batch_size, hl, wl), np.int32),
            "label_hw": ((batch_size, 2), np.int32),
            "mask": ((batch_size,), np.bool_),
        }

    # --- logging -----------------------------------------------------------------

    def progress_fields(self, metrics: Mapping[str, float]) -> Sequence[str]:
        fields = [f"pixel acc {100 * metrics['pixel_acc']:.1f}%"]
        if "aux_loss" in metrics:
            fields.append(f"aux loss {metrics['aux_loss']:.4f}")
        return fields

    def eval_summary(self, metrics: Mapping[str, float]) -> str:
        return (
            f"mIoU {100 * metrics['mIoU']:.2f}% | aAcc {100 * metrics['aAcc']:.2f}% | "
            f"mAcc {100 * metrics['mAcc']:.2f}% | {int(metrics['num_images'])} images"
        )
