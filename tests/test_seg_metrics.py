"""The segmentation metric against a NumPy transcription of mmseg's
`intersect_and_union` + `total_area_to_metrics` (histogram-based, as mmseg does)."""

import jax
import numpy as np
import pytest

from dmformer_jax.metrics import segmentation as seg


def mmseg_intersect_and_union(pred, label, num_classes, ignore_index):
    """mmseg/core/evaluation/metrics.py (v0.x), transcribed: torch.histc(bins=K,
    min=0, max=K-1) is np.histogram(bins=K, range=(0, K-1))."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    intersect = pred[pred == label]
    hist = lambda x: np.histogram(x, bins=num_classes, range=(0, num_classes - 1))[0]
    area_intersect, area_pred, area_label = hist(intersect), hist(pred), hist(label)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def mmseg_total_area_to_metrics(ti, tu, tp, tl):
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = ti.astype(np.float64) / tu
        acc = ti.astype(np.float64) / tl
    return {"aAcc": ti.sum() / tl.sum(), "IoU": iou, "Acc": acc,
            "mIoU": np.nanmean(iou), "mAcc": np.nanmean(acc)}


def _case(rng, num_classes=6):
    """3 label/pred maps of different sizes; class 4 only ever predicted, class 5 in
    neither; ignore pixels; class 3 labelled but never predicted."""
    maps = []
    for h, w in [(7, 9), (11, 5), (6, 6)]:
        label = rng.integers(0, 4, (h, w))
        label[rng.random((h, w)) < 0.2] = 255
        pred = np.where(rng.random((h, w)) < 0.6, label, rng.integers(0, 5, (h, w)))
        pred = np.where(pred == 255, 1, pred)
        pred = np.where(pred == 3, 0, pred)
        pred[0, 0] = 4
        maps.append((pred, label))
    return maps


def _reference(maps, k):
    totals = [np.zeros(k, np.int64) for _ in range(4)]
    for pred, label in maps:
        for t, a in zip(totals, mmseg_intersect_and_union(pred, label, k, 255)):
            t += a
    return totals, mmseg_total_area_to_metrics(*totals)


def test_counts_and_metrics_match_mmseg_numpy_and_jax():
    k = 6
    maps = _case(np.random.default_rng(0), k)
    (ti, tu, tp, tl), ref = _reference(maps, k)
    assert tp[4] > 0 and tl[4] == 0 and tl[3] > 0 and tp[3] == 0 and tu[5] == 0  # the case is as promised
    totals_np, totals_jax = seg.AreaTotals(k), seg.AreaTotals(k)
    jitted = jax.jit(seg.area_counts, static_argnums=(2, 3))
    for pred, label in maps:
        totals_np.add(seg.area_counts_np(pred, label, k))
        counts = jitted(pred, label, k, 255)
        assert all(np.asarray(v).dtype == np.int32 for v in counts.values())
        totals_jax.add(jax.device_get(counts))
    for totals in (totals_np, totals_jax):
        for key, want in zip(seg.KEYS, (ti, tu, tp, tl)):
            np.testing.assert_array_equal(totals.counts[key], want)
            assert totals.counts[key].dtype == np.int64
        got = totals.metrics()
        np.testing.assert_allclose(got["IoU"], ref["IoU"], equal_nan=True)
        np.testing.assert_allclose(got["Acc"], ref["Acc"], equal_nan=True)
        for key in ("aAcc", "mIoU", "mAcc"):
            assert got[key] == pytest.approx(ref[key], rel=1e-12)
    got = totals_np.metrics()
    assert got["IoU"][4] == 0.0 and np.isnan(got["IoU"][5])  # predicted-only counts, absent drops out
    assert got["mIoU"] == pytest.approx(np.mean(got["IoU"][:5]))


def test_counts_of_a_batch_equal_the_sum_of_its_images_and_valid_masks_padding():
    k = 6
    rng = np.random.default_rng(1)
    pred = rng.integers(0, k, (3, 8, 10))
    label = rng.integers(0, k, (3, 8, 10))
    label[:, :2] = 255
    batch = seg.area_counts_np(pred, label, k)
    singles = seg.AreaTotals(k)
    for i in range(3):
        singles.add(seg.area_counts_np(pred[i], label[i], k))
    for key in seg.KEYS:
        np.testing.assert_array_equal(batch[key], singles.counts[key])
    # a valid mask drops padded pixels (here: the last example and 3 columns)
    valid = np.ones_like(label, bool)
    valid[2] = False
    valid[:, :, 7:] = False
    ref = [np.zeros(k, np.int64) for _ in range(4)]
    for i in range(2):
        for t, a in zip(ref, mmseg_intersect_and_union(pred[i, :, :7], label[i, :, :7], k, 255)):
            t += a
    masked_np = seg.area_counts_np(pred, label, k, valid=valid)
    masked_jax = jax.jit(seg.area_counts, static_argnums=(2, 3))(pred, label, k, 255, valid)
    for key, want in zip(seg.KEYS, ref):
        np.testing.assert_array_equal(masked_np[key], want)
        np.testing.assert_array_equal(np.asarray(masked_jax[key]), want)


def test_all_ignored_and_empty_totals():
    k = 3
    counts = seg.area_counts_np(np.zeros((4, 4), int), np.full((4, 4), 255), k)
    assert all(int(v.sum()) == 0 for v in counts.values())
    m = seg.AreaTotals(k).add(counts).metrics()
    assert np.isnan(m["mIoU"]) and np.isnan(m["aAcc"]) and np.all(np.isnan(m["IoU"]))


def test_logits_at_original_size_is_torch_bilinear_of_the_valid_region_twice():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    k, hb, wb, stride = 5, 64, 96, 4
    logits = rng.normal(size=(3, hb // stride, wb // stride, k)).astype(np.float32)
    image_hw = np.array([[64, 96], [32, 96], [64, 64]], np.int32)  # valid regions of the padded input
    label_hw = np.array([[50, 70], [23, 81], [97, 88]], np.int32)  # originals: down- and upsampling
    out_hw = (100, 96)
    got = np.asarray(jax.jit(seg.logits_at_original_size, static_argnums=(3, 4))(
        logits, image_hw, label_hw, (hb, wb), out_hw))
    assert got.shape == (3, 100, 96, k)
    for i in range(3):
        (ih, iw), (lh, lw) = image_hw[i], label_hw[i]
        x = torch.from_numpy(logits[i, : ih // stride, : iw // stride]).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(int(ih), int(iw)), mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=(int(lh), int(lw)), mode="bilinear", align_corners=False)
        want = x[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got[i, :lh, :lw], want, atol=1e-5)
        assert np.all(got[i, lh:] == 0) and np.all(got[i, :, lw:] == 0)
