"""Segmentation data: the `ade20k` builder on a tiny archive written here, its bad-input
errors, the train pipeline's invariants (crop, labels, padding, cat_max_ratio,
determinism, resume), the eval resize rule and plan, and the offline shapes dataset."""

import ast
import dataclasses
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import ade20k_fixture  # tests/ is on sys.path
import dmformer_jax.data.segmentation as seg
from configs.common import get_base_config
from dmformer_jax.data.segmentation import shapes, transforms as T
from dmformer_jax.errors import DataError
from dmformer_jax.metrics import segmentation as metrics

# (split folder, stem, (H, W), grayscale, mask kind)
TINY = [
    ("training", "ADE_train_00000001", (45, 67), False, "random"),  # landscape, odd sizes
    ("training", "ADE_train_00000002", (71, 41), False, "random"),  # portrait
    ("training", "ADE_train_00000003", (53, 59), True, "random"),  # grayscale JPEG
    ("training", "ADE_train_00000004", (40, 52), False, "zero"),  # all 'other'
    ("training", "ADE_train_00000005", (61, 47), False, "halves"),
    ("validation", "ADE_val_00000001", (47, 63), False, "random"),
    ("validation", "ADE_val_00000002", (83, 39), True, "halves"),
    ("validation", "ADE_val_00000003", (36, 90), False, "zero"),
]


def _mask(kind, h, w, rng):
    if kind == "zero":
        return np.zeros((h, w), np.uint8)
    if kind == "halves":  # class 150 and class 1
        m = np.full((h, w), 150, np.uint8)
        m[:, : w // 2] = 1
        return m
    m = rng.integers(0, 151, (h, w)).astype(np.uint8)
    m[:5, :5] = 150
    return m


_jpeg, _png = ade20k_fixture.jpeg_bytes, ade20k_fixture.png_bytes


def write_archive(folder, *, drop_annotation=None, wrong_size=None, annotations=True):
    """A tiny ADEChallengeData2016.zip (without any annotations/ folder when not
    ``annotations``); returns {stem: (jpeg bytes, mask uint8 [H, W])}."""
    rng = np.random.default_rng(0)
    content, members = {}, []
    for split, stem, (h, w), grey, kind in TINY:
        pixels = rng.integers(0, 256, (h, w) if grey else (h, w, 3)).astype(np.uint8)
        jpeg = _jpeg(pixels)
        mask = _mask(kind, h, w, rng)
        png = None
        if annotations and stem != drop_annotation:
            png = _png(mask if stem != wrong_size else np.zeros((h + 1, w), np.uint8))
        members.append((split, stem, jpeg, png))
        content[stem] = (jpeg, mask)
    ade20k_fixture.write_ade_zip(folder, members)
    return content


def _config(data_dir, manual_dir=None, name="ade20k", size=32):
    c = get_base_config()
    c.data.name = name
    c.data.data_dir = str(data_dir)
    c.data.manual_dir = None if manual_dir is None else str(manual_dir)
    c.data.image_size = size
    c.data.shuffle_buffer = 16
    c.data.transfer_dtype = "float32"
    c.batch_size = 4
    return c


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    manual = tmp_path_factory.mktemp("manual")
    content = write_archive(manual)
    data_dir = tmp_path_factory.mktemp("tfds")
    config = _config(data_dir, manual)
    return config, content


# ------------------------------------------------------------------------ builder


def test_builder_counts_shapes_and_values(ade):
    config, content = ade
    info = seg.dataset_info(config)
    assert (info.num_train_examples, info.num_eval_examples) == (5, 3)
    assert info.num_classes == 150 and info.reduce_zero_label and info.class_names[0] == "wall"
    builder = tfds.builder("ade20k", data_dir=config.data.data_dir)
    seen = 0
    for split in ("train", "validation"):
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            name = ex["file_name"].decode()
            stem = name[:-4]
            jpeg, mask = content[stem]
            (h, w), grey = next((t[2], t[3]) for t in TINY if t[1] == stem)
            assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
            # the JPEG bytes are stored as they are: the same pixels as decoding the file
            np.testing.assert_array_equal(ex["image"], tf.io.decode_jpeg(jpeg, channels=3).numpy())
            if grey:
                np.testing.assert_array_equal(ex["image"][..., 0], ex["image"][..., 2])
            assert ex["segmentation_mask"].shape == (h, w, 1) and ex["segmentation_mask"].dtype == np.uint8
            np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], mask)
            seen += 1
    assert seen == len(TINY)


def _prepare_error(tmp_path, **kwargs):
    manual = tmp_path / "manual"
    manual.mkdir()
    if kwargs.pop("no_zip", False):
        pass
    else:
        write_archive(manual, **kwargs)
    with pytest.raises(DataError) as e:
        seg.dataset_info(_config(tmp_path / "tfds", manual))
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_zip_is_a_one_line_data_error(tmp_path):
    message = _prepare_error(tmp_path, no_zip=True)
    assert "ADEChallengeData2016.zip is not in manual_dir" in message and "download" in message


def test_missing_annotation_is_a_one_line_data_error(tmp_path):
    message = _prepare_error(tmp_path, drop_annotation="ADE_val_00000002")
    assert "ADE_val_00000002.jpg has no annotation" in message and "ADE_val_00000002.png" in message


def test_archive_without_annotations_is_a_one_line_data_error(tmp_path):
    message = _prepare_error(tmp_path, annotations=False)
    assert "has no ADEChallengeData2016/annotations/training/ folder" in message and "download it again" in message


def test_mask_of_another_size_is_a_one_line_data_error(tmp_path):
    message = _prepare_error(tmp_path, wrong_size="ADE_train_00000002")
    assert "ADE_train_00000002.png is 41x72 but its image is 41x71" in message


def test_no_manual_dir_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="set --config.data.manual_dir"):
        seg.dataset_info(_config(tmp_path / "tfds"))


# ----------------------------------------------------------------------- training


def _batches(config, n, start_step=0, process_index=0, process_count=1):
    it = seg.make_train_iterator(config, start_step=start_step, process_index=process_index,
                                 process_count=process_count)
    return [next(it) for _ in range(n)]


def test_train_batches_crop_size_labels_and_determinism(ade):
    config, _ = ade
    batches = _batches(config, 4)
    labels = np.concatenate([b["label"] for b in batches])
    for b in batches:
        assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["label"].shape == (4, 32, 32) and b["label"].dtype == np.int32
    values = set(np.unique(labels).tolist())
    assert values <= set(range(150)) | {255}
    assert 149 in values and 255 in values and 150 not in values  # 150 -> 149, 0 -> 255
    again = _batches(config, 4)
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    config2 = _config(config.data.data_dir, config.data.manual_dir)
    config2.seed = 1
    assert not np.array_equal(_batches(config2, 1)[0]["image"], batches[0]["image"])


def test_resume_gives_the_uninterrupted_stream_and_processes_split_it(ade):
    config, _ = ade
    config = _config(config.data.data_dir, config.data.manual_dir)
    config.data.num_shards = 2
    full = _batches(config, 5)  # 5 steps x 2 per shard cross the 2- and 3-example shard epochs
    resumed = _batches(config, 2, start_step=3)
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    halves = [_batches(config, 2, start_step=3, process_index=p, process_count=2) for p in range(2)]
    for t in range(2):
        np.testing.assert_array_equal(np.concatenate([halves[0][t]["label"], halves[1][t]["label"]]),
                                      full[3 + t]["label"])


def test_padding_values_float_and_uint8(ade):
    config, content = ade
    config = _config(config.data.data_dir, config.data.manual_dir, size=48)
    config.data.train_scale = (48, 24)
    config.augment.ratio_range = (1.0, 1.0)  # short side <= 24 < 48: every example is padded
    config.augment.photometric = False
    sizes = {tuple(T.rescale_size_py(h, w, (48, 24))) for split, _, (h, w), _, _ in TINY if split == "training"}
    for dtype in ("float32", "uint8"):
        config.data.transfer_dtype = dtype
        for b in _batches(config, 3):
            assert b["image"].shape == (4, 48, 48, 3)
            for image, label in zip(b["image"], b["label"]):
                rows = np.where(np.any(label != 255, axis=1))[0]
                cols = np.where(np.any(label != 255, axis=0))[0]
                inside = (label != 255)
                # the real area is one of the rescaled sizes (zero masks: all 255; skip those)
                if inside.any():
                    assert (rows.max() + 1, cols.max() + 1) in sizes | {(s[1], s[0]) for s in sizes}
                hh = max(s[0] for s in sizes)
                ww = max(s[1] for s in sizes)
                assert np.all(label[max(hh, ww):, :] == 255) and np.all(label[:, max(hh, ww):] == 255)
                pad = image[max(hh, ww):, :]
                if dtype == "float32":
                    assert np.all(pad == 0.0)
                else:
                    assert image.dtype == np.uint8
                    np.testing.assert_array_equal(pad, np.broadcast_to([124, 116, 104], pad.shape))


def test_padding_region_exactly_outside_the_rescaled_image(ade):
    """One example through `train_example`: the rescaled size is known exactly."""
    config, _ = ade
    fields = seg.seg_fields(_config("x", size=48))
    fields = dataclasses.replace(fields, train_scale=(48, 24), ratio_range=(1.0, 1.0), photometric=False,
                                 hflip=False, cat_max_ratio=1.0, reduce_zero_label=True)
    image = tf.fill([45, 67, 3], 200.0)
    label = tf.fill([45, 67], 7)
    out, lab = seg.pipeline.train_example(image, label, tf.constant([1, 2], tf.int64), fields, config, False)
    h, w = T.rescale_size_py(45, 67, (48, 24))  # (24, 36)
    out, lab = out.numpy(), lab.numpy()
    assert np.all(lab[:h, :w] == 6) and np.all(lab[h:] == 255) and np.all(lab[:, w:] == 255)
    assert np.all(out[h:] == 0) and np.all(out[:, w:] == 0)
    want = (200 / 255 - np.array(config.data.mean)) / np.array(config.data.std)
    np.testing.assert_allclose(out[:h, :w], np.broadcast_to(want, (h, w, 3)), rtol=1e-6)


# ----------------------------------------------------------------- cat_max_ratio


def _reference_window(label, seed, size, ratio, tries=10):
    """NumPy re-implementation of mmseg's RandomCrop choice, on the same uniforms."""
    h, w = label.shape
    u = tf.random.stateless_uniform([tries + 1, 2], seed, dtype=tf.float64).numpy()
    offsets = np.floor(u * np.array([max(h - size, 0) + 1, max(w - size, 0) + 1])).astype(int)
    ch, cw = min(h, size), min(w, size)
    for i in range(tries):
        t, l = offsets[i]
        labels, counts = np.unique(label[t:t + ch, l:l + cw], return_counts=True)
        counts = counts[labels != 255]
        if len(counts) > 1 and counts.max() / counts.sum() < ratio:
            return (t, l, ch, cw)
    return (*offsets[tries], ch, cw)


def _block_label():
    """64x64 of class 1 with a 20x20 block of class 2: most 32x32 crops are > 75% class 1."""
    label = np.ones((64, 64), np.int32)
    label[22:42, 22:42] = 2
    label[0:3, 0:3] = 255
    return label


def _share_ok(crop):
    values, counts = np.unique(crop[crop != 255], return_counts=True)
    return len(values) > 1 and counts.max() / counts.sum() < 0.75


def test_crop_window_follows_mmseg_and_honours_cat_max_ratio():
    label = _block_label()
    ok_with, ok_without = 0, 0
    for k in range(60):
        seed = tf.constant([k, 7], tf.int64)
        window = T.crop_window(tf.constant(label), seed, 32, 0.75).numpy()
        assert tuple(window) == _reference_window(label, seed, 32, 0.75)
        t, l, h, w = window
        ok_with += _share_ok(label[t:t + h, l:l + w])
        t, l, h, w = T.crop_window(tf.constant(label), seed, 32, 1.0).numpy()
        ok_without += _share_ok(label[t:t + h, l:l + w])
    assert ok_with >= 57 and ok_without <= 40, (ok_with, ok_without)
    # smaller than the crop: the whole image
    assert tuple(T.crop_window(tf.constant(label[:20, :50]), seed, 32, 0.75).numpy()[2:]) == (20, 32)


def test_pipeline_crops_honour_cat_max_ratio(tmp_path):
    """A dataset where most crops are dominated by one class, through the whole stream."""
    manual = tmp_path / "manual"
    manual.mkdir()
    rng = np.random.default_rng(0)
    mask = (_block_label() + 1).astype(np.uint8)  # stored classes 2, 3; 256 -> 0 'other'
    ade20k_fixture.write_ade_zip(manual, [
        (split, f"ADE_{i}", _jpeg(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)), _png(mask))
        for split in ("training", "validation") for i in range(4)
    ])
    config = _config(tmp_path / "tfds", manual)
    config.data.train_scale = (64, 64)
    config.augment.ratio_range = (1.0, 1.0)
    ok = [_share_ok(lab) for b in _batches(config, 15) for lab in b["label"]]
    config.augment.cat_max_ratio = 1.0
    ok_off = [_share_ok(lab) for b in _batches(config, 15) for lab in b["label"]]
    assert np.mean(ok) >= 0.95 and np.mean(ok_off) <= 0.7, (np.mean(ok), np.mean(ok_off))


def test_reduce_zero_label_and_photometric_range():
    lab = T.reduce_zero_label(tf.constant([[0, 1, 150, 255]])).numpy()
    np.testing.assert_array_equal(lab, [[255, 0, 149, 255]])
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (9, 11, 3)), tf.float32)
    changed = 0
    for k in range(8):
        out = T.photometric_distortion(image, tf.constant([k, 3], tf.int64)).numpy()
        assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
        changed += not np.array_equal(out, image.numpy())
        np.testing.assert_array_equal(out, T.photometric_distortion(image, tf.constant([k, 3], tf.int64)).numpy())
    assert changed >= 6


# --------------------------------------------------------------------- evaluation


def test_align_resize_rule():
    f = T.align_resize_size_py
    assert f(375, 500, (2048, 512)) == (512, 704)  # 512 x 683 -> multiples of 32
    assert f(1000, 300, (2048, 512)) == (1728, 512)  # portrait: 1707 -> 1728
    assert f(100, 1000, (2048, 512)) == (224, 2048)  # the long side caps it
    assert f(512, 512, (2048, 512)) == (512, 512)
    assert f(45, 67, (256, 64)) == (64, 96)  # 64 x 95


def test_eval_batches_cover_every_example_once_with_original_labels(ade):
    config, content = ade
    config = _config(config.data.data_dir, config.data.manual_dir)
    config.eval_batch_size = 2
    fields = seg.seg_fields(config, seg.get_builder(config))
    assert fields.eval_scale == (128, 32) and fields.eval_bucket_step == 32
    per_process = [list(seg.make_eval_iterator(config, process_index=p, process_count=2)) for p in range(2)]
    assert len(per_process[0]) == len(per_process[1])
    seen = []
    for b0, b1 in zip(*per_process):
        assert b0["image"].shape == b1["image"].shape and b0["label"].shape == b1["label"].shape
    stems = {t[1]: t for t in TINY if t[0] == "validation"}
    builder = tfds.builder("ade20k", data_dir=config.data.data_dir)
    names = [e["file_name"].decode()[:-4] for e in tfds.as_numpy(builder.as_dataset(split="validation"))]
    for batch in per_process[0] + per_process[1]:
        for k in range(batch["image"].shape[0]):
            if not batch["mask"][k]:
                assert batch["index"][k] == -1 and np.all(batch["label"][k] == 255)
                continue
            stem = names[batch["index"][k]]
            seen.append(stem)
            h, w = stems[stem][2]
            rh, rw = T.align_resize_size_py(h, w, (128, 32))
            assert tuple(batch["image_hw"][k]) == (rh, rw) and tuple(batch["label_hw"][k]) == (h, w)
            want = content[stem][1].astype(np.int32)
            want = np.where(want == 0, 255, want - 1)
            np.testing.assert_array_equal(batch["label"][k][:h, :w], want)
            assert np.all(batch["label"][k][h:] == 255) and np.all(batch["label"][k][:, w:] == 255)
            assert np.all(batch["image"][k][rh:] == 0) and np.all(batch["image"][k][:, rw:] == 0)
            assert np.any(batch["image"][k][:rh, :rw] != 0)
    assert sorted(seen) == sorted(stems)


def test_eval_uint8_pads_with_the_mean_pixel(ade):
    config, _ = ade
    config = _config(config.data.data_dir, config.data.manual_dir)
    config.eval_batch_size = 3
    config.data.transfer_dtype = "uint8"
    config.data.eval_bucket_step = 64  # buckets larger than the resized images: padding
    mean_pixel = np.round(255 * np.array(config.data.mean))
    padded = 0
    for batch in seg.make_eval_iterator(config, process_index=0, process_count=1):
        assert batch["image"].dtype == np.uint8
        for k in np.where(batch["mask"])[0]:
            rh, rw = batch["image_hw"][k]
            for pad in (batch["image"][k][rh:], batch["image"][k][:, rw:]):
                padded += pad.size
                np.testing.assert_array_equal(pad, np.broadcast_to(mean_pixel, pad.shape))
            assert batch["image"].shape[1] % 64 == 0 and batch["image"].shape[2] % 64 == 0
    assert padded > 0


def test_rgb_annotation_is_a_one_line_data_error(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    ade20k_fixture.write_ade_zip(manual, [
        (split, "ADE_1", _jpeg(np.zeros((20, 30, 3), np.uint8)), _png(np.zeros((20, 30, 3), np.uint8)))
        for split in ("training", "validation")
    ])
    with pytest.raises(DataError, match="annotation .*ADE_1.png is a RGB image, not 8-bit class indices"):
        seg.dataset_info(_config(tmp_path / "tfds", manual))


def test_eval_plan_buckets_shapes():
    sizes = [(375, 500), (500, 375), (512, 683), (300, 1000), (2000, 100), (480, 640)]
    fields = seg.seg_fields(_config("x", size=512))
    assert fields.eval_scale == (2048, 512) and fields.eval_bucket_step == 128
    plan = seg.plan_eval(sizes, fields, 2)
    assert sorted(i for b in plan.batches for i in b if i >= 0) == list(range(6))
    for batch, ((ih, iw), (lh, lw)) in zip(plan.batches, plan.shapes):
        assert ih % 128 == 0 and iw % 128 == 0 and lh % 128 == 0 and lw % 128 == 0
        for i in batch:
            if i >= 0:
                rh, rw = T.align_resize_size_py(*sizes[i], (2048, 512))
                assert rh <= ih < rh + 128 and rw <= iw < rw + 128
                assert sizes[i][0] <= lh and sizes[i][1] <= lw
    # 375x500, 512x683 and 480x640 share the 512x768 bucket
    assert len(set(plan.shapes)) == 4


# -------------------------------------------------------------------- offline set


@pytest.mark.slow  # builds the whole 3,300-image offline set (~11 CPU s); CI runs it
def test_shapes_dataset_builds_with_its_classes_and_is_learnable_by_colour(tmp_path):
    config = _config(tmp_path / "tfds", name="dmformer_seg_shapes", size=64)
    info = seg.dataset_info(config)
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (7, 3000, 300)
    assert not info.reduce_zero_label
    builder = tfds.builder("dmformer_seg_shapes", data_dir=str(tmp_path / "tfds"))
    examples = list(tfds.as_numpy(builder.as_dataset(split="validation")))
    present = np.zeros(7, np.int64)
    totals = metrics.AreaTotals(7)
    reference = {i: (im, lab) for i, im, lab in shapes.split_examples("validation")}
    for ex in examples:
        image, mask = ex["image"], ex["segmentation_mask"][..., 0]
        i = int(ex["file_name"].decode()[len("validation_"):-4])
        np.testing.assert_array_equal(image, reference[i][0])  # deterministic from the seed
        np.testing.assert_array_equal(mask, reference[i][1])
        assert 48 <= image.shape[0] <= 96 and 48 <= image.shape[1] <= 96
        present += np.bincount(mask.ravel(), minlength=7)[:7]
        # a per-pixel nearest-colour rule already separates the classes well
        dist = np.linalg.norm(image[..., None, :].astype(np.float32) - shapes.COLOURS[None, None, 1:], axis=-1)
        pred = np.where(dist.min(-1) < 60, dist.argmin(-1) + 1, 0)
        totals.add(metrics.area_counts_np(pred, mask, 7))
    assert np.all(present > 0) and mask.max() <= 6
    assert totals.metrics()["mIoU"] > 0.5
    batch = _batches(config, 1)[0]
    assert set(np.unique(batch["label"]).tolist()) <= set(range(7)) | {255}


def test_data_and_metrics_import_nothing_from_models_train_api_tasks_checkpoint():
    root = pathlib.Path(seg.__file__).resolve().parents[2]
    banned = {"models", "train", "api", "tasks", "checkpoint"}
    files = list((root / "dmformer_jax/data/segmentation").glob("*.py"))
    files += list((root / "dmformer_jax/metrics").glob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                bad = banned | ({"data"} if "metrics" in str(path) else set())
                assert not (parts[0] == "dmformer_jax" and len(parts) > 1 and parts[1] in bad), (path, name)


def test_rescale_size_caps_the_long_side_like_mmcv():
    cases = {(375, 500): (512, 683), (100, 1000): (205, 2048), (1000, 300): (1707, 512), (512, 512): (512, 512)}
    for (h, w), want in cases.items():
        assert T.rescale_size_py(h, w, (2048, 512)) == want
        assert tuple(T.rescale_size(h, w, (2048.0, 512.0)).numpy()) == want
    # random rescale: r in the ratio range, the target scale (int(2048 r), int(512 r))
    image, label = tf.zeros([30, 300, 3]), tf.zeros([30, 300], tf.int32)
    for k in range(5):
        out, lab = T.random_rescale(image, label, tf.constant([k, 0], tf.int64), (2048, 512), (0.5, 2.0))
        h, w = lab.shape
        assert out.shape[:2] == lab.shape and w == max(h, w)
        assert 1024 <= w <= 4096 and abs(w / h - 10) < 0.5  # long side binds: 2048 r


def _mmseg_photometric_np(image, p):
    """mmseg's PhotoMetricDistortion on given draws, in NumPy (HSV by matplotlib)."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    def convert(x, alpha=1.0, beta=0.0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8).astype(np.float32)

    x = image.astype(np.float32)
    if p["brightness"]:
        x = convert(x, beta=p["beta"])
    if p["contrast_first"] and p["contrast"]:
        x = convert(x, alpha=p["contrast_alpha"])
    if p["saturation"]:
        hsv = rgb_to_hsv(x / 255.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * p["saturation_alpha"], 0, 1)
        x = np.clip(np.round(hsv_to_rgb(hsv) * 255), 0, 255)
    if p["hue"]:
        hsv = rgb_to_hsv(x / 255.0)
        hsv[..., 0] = (hsv[..., 0] * 180 + p["hue_shift"]) % 180 / 180
        x = np.clip(np.round(hsv_to_rgb(hsv) * 255), 0, 255)
    if not p["contrast_first"] and p["contrast"]:
        x = convert(x, alpha=p["contrast_alpha"])
    return x


def test_photometric_distortion_matches_a_numpy_transcription_of_mmseg():
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3)).astype(np.float32)
    steps = np.zeros(5)
    for k in range(24):
        seed = tf.constant([k, 3], tf.int64)
        p = {key: v.numpy() for key, v in T.sample_photometric(seed).items()}
        assert -32 <= p["beta"] <= 32 and 0.5 <= p["contrast_alpha"] <= 1.5 and -18 <= p["hue_shift"] < 18
        steps += [p["brightness"], p["contrast"], p["saturation"], p["hue"], p["contrast_first"]]
        out = T.photometric_distortion(tf.constant(image), seed).numpy()
        want = _mmseg_photometric_np(image, p)
        assert np.abs(out - want).max() <= 2.0, (k, p)  # float HSV round trips: a level, x contrast
        assert np.mean(out != want) < 0.1
        np.testing.assert_array_equal(out, T.photometric_distortion(tf.constant(image), seed).numpy())
    assert np.all((steps >= 5) & (steps <= 19)), steps  # each step about half the time


def test_flip_mirrors_image_and_label_together_or_neither():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (5, 7, 3)).astype(np.float32)
    label = rng.integers(0, 150, (5, 7)).astype(np.uint8)
    outcomes = set()
    for s in range(40):
        got_image, got_label = T.random_flip(tf.constant(image), tf.constant(label), tf.constant([s, 1], tf.int64))
        got_image, got_label = got_image.numpy(), got_label.numpy()
        flipped = np.array_equal(got_image, image[:, ::-1])
        assert flipped or np.array_equal(got_image, image)
        np.testing.assert_array_equal(got_label, label[:, ::-1] if flipped else label)  # the same decision
        outcomes.add(flipped)
    assert outcomes == {True, False}  # p = 0.5: both happen in 40 draws


def test_saturation_in_rgb_equals_the_hsv_round_trip():
    """`scale_hsv_saturation` (closed form in RGB) against matplotlib's float64 HSV round
    trip, unrounded: grey, black, white and saturated pixels, alpha below and above 1
    (S clipped at 1)."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (16, 20, 3)).astype(np.float64)
    image[0, :4] = [[0, 0, 0], [255, 255, 255], [77, 77, 77], [255, 0, 0]]
    image[1] = rng.integers(0, 3, (20, 1)) + 120  # near-grey: tiny chroma
    for alpha in (0.5, 0.93, 1.0, 1.4, 3.0):
        hsv = rgb_to_hsv(image / 255.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * alpha, 0, 1)
        want = hsv_to_rgb(hsv) * 255.0
        got = T.scale_hsv_saturation(tf.constant(image, tf.float32), alpha).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)


@pytest.mark.parametrize("in_hw,out_hw", [((512, 683), (1024, 1366)), ((512, 683), (301, 401)), ((37, 23), (91, 11)),
                                          ((1, 9), (5, 9)), ((640, 480), (640, 480)), ((333, 500), (667, 1001)),
                                          ((2, 3), (107, 121))])  # the last: float32 ties
def test_label_resize_equals_tf_nearest(in_hw, out_hw):
    """`resize_label` (gathers) against TF's ResizeNearestNeighbor, the op it replaced."""
    label = np.random.default_rng(sum(in_hw)).integers(0, 256, in_hw).astype(np.int32)
    want = tf.image.resize(tf.constant(label)[..., None], out_hw, method="nearest")[..., 0].numpy()
    got = T.resize_label(tf.constant(label), tf.constant(out_hw)).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_hue_shift_in_rgb_equals_the_hsv_round_trip():
    """`shift_hsv_hue` (closed form in RGB) against matplotlib's float64 HSV round trip,
    unrounded, for shifts of either sign, pixels with ties for the max channel, greys."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (16, 20, 3)).astype(np.float64)
    image[0, :8] = [[0, 0, 0], [255, 255, 255], [77, 77, 77], [255, 0, 0], [200, 200, 10], [10, 200, 200],
                    [200, 10, 200], [0, 255, 0]]
    for shift in (-18, -7, 1, 9, 17, 90):
        hsv = rgb_to_hsv(image / 255.0)
        hsv[..., 0] = (hsv[..., 0] * 180 + shift) % 180 / 180
        want = hsv_to_rgb(hsv) * 255.0
        got = T.shift_hsv_hue(tf.constant(image, tf.float32), shift / 180.0).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-3)


def test_pad_to_mean_pixel_is_static_and_exact():
    """Padding with a per-channel value: the padded image keeps a static shape (the fast
    per-channel path) and holds x inside, the value outside, exactly."""
    traced = []

    @tf.function
    def f(image, label):
        out, lab = T.pad_to(image, label, 12, 10, [124.0, 116.0, 104.0])
        traced.append(out.shape)
        return out, lab

    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3)).astype(np.float32)
    out, lab = (t.numpy() for t in f(tf.constant(image), tf.zeros([7, 9], tf.int32)))
    assert traced == [(12, 10, 3)]
    np.testing.assert_array_equal(out[:7, :9], image)
    np.testing.assert_array_equal(out[7:], np.broadcast_to([124.0, 116.0, 104.0], (5, 10, 3)))
    np.testing.assert_array_equal(out[:, 9:], np.broadcast_to([124.0, 116.0, 104.0], (12, 1, 3)))
    assert np.all(lab[7:] == 255) and np.all(lab[:, 9:] == 255) and np.all(lab[:7, :9] == 0)
