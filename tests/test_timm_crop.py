"""Training crops and JPEG decoding as timm makes them.

The reference is a transcription of timm's ``RandomResizedCrop.get_params``
(timm/data/transforms.py) with Python's ``random``, written from timm's code; timm
itself is not a test dependency (its torchvision wheels pull a CUDA build of torch).
"""

import io
import math
import random

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dmformer_jax.data import augment as A

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
N = 10_000


def timm_get_params(height, width, scale, ratio, rng: random.Random):
    """timm's RandomResizedCrop.get_params: (top, left, h, w)."""
    area = height * width
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _ours(height, width, n=N, scale=SCALE, ratio=RATIO):
    ds = tf.data.Dataset.range(n).map(
        lambda i: A.sample_crop_window(tf.constant([height, width]), tf.stack([tf.constant(7, tf.int64), i]),
                                       scale, ratio))
    return np.concatenate([b.numpy() for b in ds.batch(n)])


def _timm(height, width, n=N, scale=SCALE, ratio=RATIO):
    rng = random.Random(0)
    return np.array([timm_get_params(height, width, scale, ratio, rng) for _ in range(n)])


@pytest.mark.parametrize("height,width", [(375, 500), (400, 400), (500, 333)])
def test_crop_distribution_matches_timm(height, width):
    ours, timm = _ours(height, width), _timm(height, width)
    for windows in (ours, timm):
        top, left, h, w = windows.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area = lambda wd: wd[:, 2] * wd[:, 3] / (height * width)  # noqa: E731
    log_ratio = lambda wd: np.log(wd[:, 3] / wd[:, 2])  # noqa: E731
    qs = np.linspace(0.05, 0.95, 19)
    # Quantiles of 10k draws: the standard error of a quantile of a [0, 1] variable is
    # below 0.005 here; TF's height-uniform sampler misses by up to 0.09 (its mean area
    # on 375x500 is 0.370, timm's 0.433).
    np.testing.assert_allclose(np.quantile(area(ours), qs), np.quantile(area(timm), qs), atol=0.02)
    np.testing.assert_allclose(np.quantile(log_ratio(ours), qs), np.quantile(log_ratio(timm), qs), atol=0.02)
    # Placement: the window's centre spreads uniformly over the free range.
    rel_top = lambda wd: wd[:, 0] / np.maximum(height - wd[:, 2], 1)  # noqa: E731
    np.testing.assert_allclose(np.quantile(rel_top(ours), qs), np.quantile(rel_top(timm), qs), atol=0.03)


def test_square_source_small_crops_as_often_as_timm():
    ours, timm = _ours(300, 300, n=4000), _timm(300, 300, n=4000)
    p = lambda wd: np.mean(wd[:, 2] * wd[:, 3] / 300**2 < 0.3)  # noqa: E731
    assert abs(p(ours) - p(timm)) < 0.03, (p(ours), p(timm))  # timm 0.27; TF's sampler 0.41


@pytest.mark.parametrize("height,width,scale", [(10, 100, (0.9, 1.0)), (100, 10, (0.9, 1.0)), (50, 60, (1.5, 2.0))])
def test_fallback_is_timms_ratio_clamped_centre_crop(height, width, scale):
    want = timm_get_params(height, width, scale, RATIO, random.Random(0))
    got = A.sample_crop_window(tf.constant([height, width]), tf.constant([1, 2], tf.int64), scale, RATIO).numpy()
    assert tuple(got) == want


def _natural_jpeg(height=96, width=128, quality=90) -> bytes:
    """A smooth, textured RGB image (not noise) saved by PIL as a 4:2:0 JPEG."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.RandomState(0)
    img = np.stack([
        128 + 90 * np.sin(x / 9.0) * np.cos(y / 13.0),
        128 + 80 * np.cos((x + y) / 17.0),
        128 + 60 * np.sin(np.hypot(x - 40, y - 30) / 6.0),
    ], axis=-1) + rng.normal(0, 6, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_jpeg_decode_is_bit_identical_to_pil():
    data = _natural_jpeg()
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    ours = A.decode_image(tf.constant(data)).numpy()
    np.testing.assert_array_equal(ours, pil)
    # The test can tell: TF's default fast DCT is not PIL's decode.
    fast = tf.io.decode_jpeg(data, channels=3).numpy()
    assert np.abs(fast.astype(int) - pil).max() > 0


def test_decode_and_crop_uses_the_accurate_dct():
    data = _natural_jpeg()
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    window = tf.constant([16, 24, 64, 64])
    crop = tf.image.decode_and_crop_jpeg(data, window, channels=3, dct_method=A.DCT_METHOD).numpy().astype(int)
    diff = np.abs(crop - pil[16:80, 24:88])
    # Inside the window the pixels are PIL's exactly; only the 2-pixel border differs,
    # where chroma upsampling lacks the neighbours outside the window (fast DCT: 3
    # levels off inside, 1.0 on average).
    assert diff[2:-2, 2:-2].max() == 0 and diff.mean() < 0.1
    crop_fast = tf.image.decode_and_crop_jpeg(data, window, channels=3).numpy().astype(int)
    assert np.abs(crop_fast - pil[16:80, 24:88])[2:-2, 2:-2].max() > 0


def test_eval_transform_matches_timm_on_a_jpeg_within_one_level():
    """timm eval: PIL decode, Resize(floor(size/crop_pct), bicubic) of the short side,
    CenterCrop(size) -- against our decode + eval_resize_crop."""
    data = _natural_jpeg(150, 200)
    size, crop_pct = 64, 0.875
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = math.floor(size / crop_pct)
    w, h = img.size
    new = (int(scale * w / h), scale) if w >= h else (scale, int(scale * h / w))
    resized = np.asarray(img.resize(new, Image.BICUBIC))
    top, left = int(round((resized.shape[0] - size) / 2.0)), int(round((resized.shape[1] - size) / 2.0))
    want = resized[top:top + size, left:left + size].astype(int)
    got = A.eval_resize_crop(A.decode_image(tf.constant(data)), size, crop_pct).numpy().astype(int)
    assert np.abs(got - want).max() <= 1 and np.mean(got != want) < 1e-3
