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


# ------------------------------------------------------- logits at the original size


def _interp_matrix(in_size, out_size, in_max: int, out_max: int):
    """[out_max, in_max] matrix of PyTorch's bilinear resize (align_corners=False, no
    antialiasing) from ``in_size`` to ``out_size`` samples (traced ints); rows from
    out_size on and columns from in_size on are zero."""
    import jax.numpy as jnp

    in_f = jnp.asarray(in_size, jnp.float32)
    out_f = jnp.asarray(out_size, jnp.float32)
    i = jnp.arange(out_max, dtype=jnp.float32)
    src = jnp.maximum((i + 0.5) * (in_f / out_f) - 0.5, 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
    i1 = jnp.minimum(i0 + 1, in_size - 1)
    l1 = src - i0.astype(jnp.float32)
    cols = jnp.arange(in_max)[None, :]
    m = (1.0 - l1)[:, None] * (cols == i0[:, None]) + l1[:, None] * (cols == i1[:, None])
    return m * (jnp.arange(out_max) < out_size)[:, None]


def logits_at_original_size(logits, image_hw, label_hw, input_hw, out_hw):
    """mmseg's whole-image test on padded, bucketed batches (jittable).

    logits: [B, h, w, K] for a padded input batch of static size ``input_hw`` = (Hb, Wb)
      (any output stride: Hb / h);
    image_hw: int [B, 2], the resized image's (h', w') at the input's top-left
      (make_eval_iterator's 'image_hw'); label_hw: int [B, 2], the original (H, W);
    out_hw: static (Hl, Wl) >= every (H, W) (the padded label's shape).

    As mmseg: the logits of the valid region (h' h / Hb, w' w / Wb) are resized
    bilinearly (align_corners=False, no antialiasing) to (h', w'), then to (H, W).
    Both resizes are one matrix product per axis. Returns float32 [B, Hl, Wl, K], zero
    outside (H, W); argmax it for the predicted class map.
    """
    import jax
    import jax.numpy as jnp

    b, h, w, _ = logits.shape
    hb, wb = input_hw
    hl, wl = out_hw
    image_hw = jnp.asarray(image_hw, jnp.int32)
    label_hw = jnp.asarray(label_hw, jnp.int32)

    def matrices(ihw, lhw):
        vh, vw = ihw[0] * h // hb, ihw[1] * w // wb  # valid logits
        mh = _interp_matrix(ihw[0], lhw[0], hb, hl) @ _interp_matrix(vh, ihw[0], h, hb)
        mw = _interp_matrix(ihw[1], lhw[1], wb, wl) @ _interp_matrix(vw, ihw[1], w, wb)
        return mh, mw

    mh, mw = jax.vmap(matrices)(image_hw, label_hw)
    x = logits.astype(jnp.float32)
    x = jnp.einsum("bih,bhwk->biwk", mh, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("bjw,biwk->bijk", mw, x, precision=jax.lax.Precision.HIGHEST)


def predicted_classes(logits, image_hw, label_hw, input_hw, out_hw):
    """The class map the evaluation scores: argmax of `logits_at_original_size` (same
    arguments), int32 [B, Hl, Wl]; pixels outside each (H, W) are 0 (padding)."""
    import jax.numpy as jnp

    full = logits_at_original_size(logits, image_hw, label_hw, input_hw, out_hw)
    return jnp.argmax(full, axis=-1).astype(jnp.int32)
