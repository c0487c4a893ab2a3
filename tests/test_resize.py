"""`dmformer_jax.data.resize`: PIL's bicubic resize (timm's), checked against PIL itself.

PIL works in 22-bit fixed point, we in float32, so a value within ~1e-5 of a rounding
tie may land one level apart: the tests allow one level on at most 1 value in 1,000
(measured: ~5e-5 on photo-sized crops, ~5e-4 for exact 2x enlargements, whose border
pixels hit exact ties).
TF's own antialiased bicubic (`tf.image.resize`), which the pipeline used before, is off
on ~20% of pixels (up to 9 levels when enlarging), so the bound tells the two apart.
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dmformer_jax.data import resize as R

MAX_MISMATCH = 1e-3  # fraction of values allowed one level off PIL


def _photo(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    """Smooth gradients + sharp-edged blocks + noise, uint8 [h, w, channels]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 120 + 70 * np.sin(xx / 9.0 + seed)[..., None] + 50 * np.cos(yy / 13.0)[..., None]
    img = img + rng.normal(0, 30, (h, w, channels))
    img[h // 4 : h // 2, w // 3 : (2 * w) // 3] = rng.integers(0, 256, channels)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pil(img: np.ndarray, h: int, w: int) -> np.ndarray:
    mode_img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    out = np.asarray(mode_img.resize((w, h), Image.BICUBIC)).astype(np.int64)
    return out.reshape(h, w, img.shape[-1])


def _assert_pil_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.all(got == np.round(got)) and got.min() >= 0 and got.max() <= 255
    diff = np.abs(got.astype(np.int64) - want)
    assert diff.max() <= 1, f"up to {diff.max()} levels off PIL"
    assert np.mean(diff > 0) <= MAX_MISMATCH, f"{np.mean(diff > 0):.2%} of values off PIL"


SHAPES = [
    # (in_h, in_w, out_h, out_w): shrink, enlarge, one axis each way, an ImageNet photo,
    # outputs not divisible by the matmul block, sizes the last block must clamp at.
    (375, 500, 224, 224),
    (333, 500, 224, 224),
    (400, 300, 224, 224),  # a tall crop: Pillow >= 13 resamples the rows first
    (300, 120, 224, 224),  # rows first, columns enlarged
    (60, 45, 224, 224),
    (57, 443, 224, 224),
    (224, 300, 224, 224),
    (500, 500, 37, 29),
    (91, 67, 227, 101),
    (3, 2, 16, 16),
    (1, 1, 8, 8),
    (40, 40, 40, 40),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_resize_equals_pil(shape):
    in_h, in_w, out_h, out_w = shape
    img = _photo(in_h, in_w, seed=in_h + in_w)
    got = R.resize(tf.constant(img), (out_h, out_w)).numpy()
    _assert_pil_equal(got, _pil(img, out_h, out_w))


def test_resize_to_the_same_size_is_the_identity_and_any_dtype_or_channel_count_works():
    img = _photo(33, 47, seed=1)
    np.testing.assert_array_equal(R.resize(tf.constant(img), (33, 47)).numpy(), img)
    as_float = R.resize(tf.constant(img.astype(np.float32)), (20, 61)).numpy()
    np.testing.assert_array_equal(as_float, R.resize(tf.constant(img), (20, 61)).numpy())
    grey = _photo(70, 50, seed=2, channels=1)
    _assert_pil_equal(R.resize(tf.constant(grey), (32, 24)).numpy(), _pil(grey, 32, 24))


@pytest.mark.parametrize("in_shape,resized,window", [
    ((375, 500), (256, 341), (224, 224)),  # timm's eval transform of a landscape photo
    ((500, 333), (384, 256), (224, 224)),
    ((80, 60), (160, 120), (96, 80)),  # enlarging 2x: exact ties at the borders
])
def test_window_equals_pil_resize_then_crop(in_shape, resized, window):
    """Only the window is computed, at the corner given, at the edges of the image too."""
    img = _photo(*in_shape, seed=sum(in_shape))
    full = _pil(img, *resized)
    corners = [(0, 0), (resized[0] - window[0], resized[1] - window[1]),
               ((resized[0] - window[0]) // 2, (resized[1] - window[1]) // 3)]
    for top, left in corners:
        got = R.resize_window(tf.constant(img), tf.constant(resized), tf.constant([top, left]), window).numpy()
        _assert_pil_equal(got, full[top : top + window[0], left : left + window[1]])


def test_dynamic_shapes_in_a_graph():
    """The pipeline's images have unknown sizes: a traced function with None dims."""
    fn = tf.function(lambda x, s: R.resize_window(x, s, tf.zeros([2], tf.int32), (24, 24)),
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)])
    for shape in ((50, 70), (31, 19)):
        img = _photo(*shape, seed=shape[0])
        out = fn(tf.constant(img), tf.constant([24, 24]))
        assert out.shape == (24, 24, 3)
        _assert_pil_equal(out.numpy(), _pil(img, 24, 24))
