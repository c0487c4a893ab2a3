"""Semantic segmentation metrics: mmsegmentation's `intersect_and_union` and
`total_area_to_metrics` (mmseg/core/evaluation/metrics.py, v0.x).

Per class k of ``num_classes``, over the pixels whose label is not ``ignore_index``
(and, optionally, inside a ``valid`` mask):

- intersection[k] = #pixels with pred == label == k
- pred_area[k]    = #pixels with pred == k
- label_area[k]   = #pixels with label == k
- union[k]        = pred_area[k] + label_area[k] - intersection[k]

Values outside 0..num_classes-1 count in no class (as `torch.histc` over that range
drops them). The four counts add up over batches, images and processes; the metrics
come from the totals over the whole evaluation set (not an average of per-image
scores):

- IoU[k]  = intersection[k] / union[k] (NaN where union[k] == 0: the class is in
  neither the labels nor the predictions, and drops out of the mean)
- mIoU    = nanmean(IoU): a class only in the predictions has IoU 0 and counts
- Acc[k]  = intersection[k] / label_area[k] (NaN where label_area[k] == 0), mAcc = nanmean
- aAcc    = sum(intersection) / sum(label_area)

`area_counts_np` (NumPy) and `area_counts` (JAX, jittable; int32 per call, so at most
2**31 - 1 pixels per call) compute the same counts; `AreaTotals` sums them as int64 on
the host.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

IGNORE_INDEX = 255
KEYS = ("intersection", "union", "pred_area", "label_area")


def area_counts_np(pred, label, num_classes: int, ignore_index: int = IGNORE_INDEX,
                   valid=None) -> dict[str, np.ndarray]:
    """Per-class counts (int64 [num_classes] each) of ``pred`` against ``label``.

    pred, label: integer arrays of one shape (any rank; e.g. [B, H, W]).
    valid: optional bool array of that shape; False pixels are not counted (padding).
    """
    pred = np.asarray(pred).astype(np.int64)
    label = np.asarray(label).astype(np.int64)
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {pred.shape} != label shape {label.shape}")
    keep = label != ignore_index
    if valid is not None:
        keep &= np.asarray(valid, bool)
    p, lab = pred[keep], label[keep]

    def count(x):
        x = x[(x >= 0) & (x < num_classes)]
        return np.bincount(x, minlength=num_classes).astype(np.int64)

    inter = count(p[p == lab])
    pred_area, label_area = count(p), count(lab)
    return {"intersection": inter, "union": pred_area + label_area - inter,
            "pred_area": pred_area, "label_area": label_area}


def area_counts(pred, label, num_classes: int, ignore_index: int = IGNORE_INDEX, valid=None):
    """`area_counts_np` in JAX (jittable; ``num_classes`` and ``ignore_index`` static).

    Returns int32 [num_classes] arrays (one call must hold < 2**31 pixels); sum them
    on the host as int64 (`AreaTotals.add`). Under a batch-sharded jit the sums are
    global, so every process gets the counts of the whole global batch.
    """
    import jax.numpy as jnp

    pred = jnp.asarray(pred).astype(jnp.int32)
    label = jnp.asarray(label).astype(jnp.int32)
    keep = label != ignore_index
    if valid is not None:
        keep = keep & jnp.asarray(valid, bool)

    def count(x, mask):
        mask = mask & (x >= 0) & (x < num_classes)
        idx = jnp.where(mask, x, 0).reshape(-1)
        return jnp.zeros([num_classes], jnp.int32).at[idx].add(mask.reshape(-1).astype(jnp.int32))

    inter = count(pred, keep & (pred == label))
    pred_area = count(pred, keep)
    label_area = count(label, keep)
    return {"intersection": inter, "union": pred_area + label_area - inter,
            "pred_area": pred_area, "label_area": label_area}


@dataclasses.dataclass
class AreaTotals:
    """int64 running sums of the four per-class counts (host side)."""

    num_classes: int

    def __post_init__(self):
        self.counts = {k: np.zeros([self.num_classes], np.int64) for k in KEYS}

    def add(self, counts: Mapping[str, np.ndarray]) -> "AreaTotals":
        for k in KEYS:
            c = np.asarray(counts[k]).astype(np.int64)
            if c.shape != (self.num_classes,):
                raise ValueError(f"{k} has shape {c.shape}, expected ({self.num_classes},)")
            self.counts[k] += c
        return self

    def metrics(self) -> dict:
        return metrics_from_totals(self.counts)


def metrics_from_totals(totals: Mapping[str, np.ndarray]) -> dict:
    """{'mIoU', 'mAcc', 'aAcc' (floats), 'IoU', 'Acc' (float64 [K], NaN where undefined)}
    from the summed counts, as mmseg's `total_area_to_metrics`."""
    inter = np.asarray(totals["intersection"], np.float64)
    union = np.asarray(totals["union"], np.float64)
    label_area = np.asarray(totals["label_area"], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
        acc = np.where(label_area > 0, inter / np.where(label_area > 0, label_area, 1), np.nan)
    total_label = label_area.sum()

    def nanmean(x):
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")

    return {
        "mIoU": nanmean(iou),
        "mAcc": nanmean(acc),
        "aAcc": float(inter.sum() / total_label) if total_label > 0 else float("nan"),
        "IoU": iou,
        "Acc": acc,
    }
