"""Segmentation transforms as stateless TensorFlow ops, after mmsegmentation v0.x's
`Resize(ratio_range)`, `RandomCrop(cat_max_ratio)`, `RandomFlip`,
`PhotoMetricDistortion` and `Pad`, and PVT's `AlignResize` for evaluation.

Conventions: images are float32 [H, W, 3] with integral values in 0..255 until they
are normalised ("uint8 emulation", as `dmformer_jax.data.augment`); labels are int32
[H, W] with 255 = ignore. Every random op takes a seed, int64 [2], and uses only
`tf.random.stateless_*`: the same seed gives the same result eagerly, in tf.data and
after a resume.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from dmformer_jax.data import augment as aug

IGNORE_INDEX = 255


def reduce_zero_label(label: tf.Tensor) -> tf.Tensor:
    """mmseg's reduce_zero_label: 0 -> 255 (ignored), c -> c - 1, 255 stays 255."""
    label = tf.cast(label, tf.int32)
    return tf.where((label == 0) | (label == IGNORE_INDEX), IGNORE_INDEX, label - 1)


def rescale_size(height, width, scale: Sequence[float]) -> tf.Tensor:
    """mmcv `imrescale` size: the largest factor with long side <= max(scale) and short
    side <= min(scale); each side int(side * factor + 0.5). int32 [2] = (h, w)."""
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    long_edge = tf.cast(tf.reduce_max(scale), tf.float64)
    short_edge = tf.cast(tf.reduce_min(scale), tf.float64)
    factor = tf.minimum(long_edge / tf.maximum(h, w), short_edge / tf.minimum(h, w))
    return tf.cast(tf.floor(tf.stack([h, w]) * factor + 0.5), tf.int32)


def rescale_size_py(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """`rescale_size` in Python (the eval plan computes shapes without TF)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def align_resize_size_py(height: int, width: int, scale: Sequence[float], divisor: int = 32) -> tuple[int, int]:
    """PVT's AlignResize: `rescale_size`, then each side rounded up to a multiple of ``divisor``."""
    h, w = rescale_size_py(height, width, scale)
    return int(math.ceil(h / divisor)) * divisor, int(math.ceil(w / divisor)) * divisor


def resize_image(image: tf.Tensor, size) -> tf.Tensor:
    """Bilinear without antialiasing (cv2 INTER_LINEAR, mmcv's default), rounded to 0..255."""
    out = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)
    return aug.to_uint8_range(out)


def nearest_indices(in_size, out_size) -> tf.Tensor:
    """The source index of each of ``out_size`` samples along an axis of ``in_size``,
    int32 [out_size]: floor((i + 0.5) * in/out), as ``tf.image.resize(method='nearest')``
    computes it (half-pixel centres, the scale rounded to float32 first)."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    index = tf.cast(tf.floor((tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale), tf.int32)
    return tf.minimum(index, tf.cast(in_size, tf.int32) - 1)


def resize_label(label: tf.Tensor, size) -> tf.Tensor:
    """Nearest-neighbour resize of an int label map [H, W] to ``size``, int32: the
    pixels of ``tf.image.resize(method='nearest')``.

    As two row gathers around transposes: ResizeNearestNeighbor takes 8.4 ms to double a
    512x683 map on one CPU thread, a gather along axis 1 6.4, this 1.8 (2026-11-28).
    """
    label = tf.cast(label, tf.int32)
    shape = tf.shape(label)
    columns = tf.gather(tf.transpose(label), nearest_indices(shape[1], size[1]))  # [W', H]
    return tf.gather(tf.transpose(columns), nearest_indices(shape[0], size[0]))  # [H', W']


def random_rescale(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, scale: Sequence[float],
                   ratio_range: Sequence[float]) -> tuple[tf.Tensor, tf.Tensor]:
    """mmseg `Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)`:
    r ~ U[ratio_range], target (int(scale[0] r), int(scale[1] r)), `rescale_size`."""
    r = tf.random.stateless_uniform([], seed, float(ratio_range[0]), float(ratio_range[1]), dtype=tf.float64)
    target = tf.floor(tf.constant([float(s) for s in scale], tf.float64) * r)
    shape = tf.shape(label)
    size = rescale_size(shape[0], shape[1], target)
    return resize_image(image, size), resize_label(label, size)


def _class_share_ok(crop: tf.Tensor, cat_max_ratio: float) -> tf.Tensor:
    """mmseg's test: more than one non-ignored class, the largest below cat_max_ratio."""
    flat = tf.reshape(crop, [-1])
    counts = tf.math.bincount(flat, minlength=256, maxlength=256, dtype=tf.int64)
    counts = tf.tensor_scatter_nd_update(counts, [[IGNORE_INDEX]], tf.zeros([1], tf.int64))
    total = tf.reduce_sum(counts)
    share = tf.cast(tf.reduce_max(counts), tf.float64) / tf.cast(tf.maximum(total, 1), tf.float64)
    return (tf.math.count_nonzero(counts) > 1) & (share < cat_max_ratio)


def crop_window(label: tf.Tensor, seed: tf.Tensor, size: int, cat_max_ratio: float = 0.75,
                tries: int = 10) -> tf.Tensor:
    """mmseg `RandomCrop((size, size), cat_max_ratio)` window, int32 [top, left, h, w].

    Offsets uniform in 0..max(side - size, 0); h, w = min(side, size). With
    cat_max_ratio < 1 the first window of ``tries`` whose label crop passes the
    class-share test is taken, else the next one, unchecked (as mmseg does).
    """
    shape = tf.shape(label)
    h, w = shape[0], shape[1]
    u = tf.random.stateless_uniform([tries + 1, 2], seed, dtype=tf.float64)
    margins = tf.cast(tf.stack([tf.maximum(h - size, 0), tf.maximum(w - size, 0)]) + 1, tf.float64)
    offsets = tf.cast(tf.floor(u * margins[None]), tf.int32)  # [tries + 1, 2]
    ch, cw = tf.minimum(h, size), tf.minimum(w, size)
    if cat_max_ratio < 1.0:
        def crop_ok(i):
            o = offsets[i]
            return _class_share_ok(label[o[0]:o[0] + ch, o[1]:o[1] + cw], cat_max_ratio)

        i = tf.while_loop(lambda i: (i < tries) & ~crop_ok(tf.minimum(i, tries - 1)), lambda i: (i + 1,),
                          (tf.constant(0),))[0]
    else:
        i = tf.constant(0)
    return tf.stack([offsets[i, 0], offsets[i, 1], ch, cw])


def crop(image: tf.Tensor, label: tf.Tensor, window: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    t, l, h, w = window[0], window[1], window[2], window[3]
    return image[t:t + h, l:l + w], label[t:t + h, l:l + w]


def random_flip(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, prob: float = 0.5):
    """Horizontal flip of image and label together with probability ``prob``."""
    flip = tf.random.stateless_uniform([], seed) < prob
    # tf.reverse, not [:, ::-1]: the negative-stride slice is ~14x slower on CPU (docs/data.md).
    return tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])), lambda: (image, label))


def _convert(image: tf.Tensor, alpha=1.0, beta=0.0) -> tf.Tensor:
    """mmseg's convert: x * alpha + beta, clipped to 0..255, truncated to uint8 levels."""
    return tf.floor(tf.clip_by_value(image * alpha + beta, 0.0, 255.0))


def sample_photometric(seed: tf.Tensor, brightness_delta: float = 32.0,
                       contrast_range: Sequence[float] = (0.5, 1.5),
                       saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18) -> dict:
    """The random draws of `photometric_distortion` from ``seed``: a coin per step
    (bool), beta ~ U(-brightness_delta, brightness_delta), contrast and saturation
    factors ~ U(range), hue shift ~ an integer in [-hue_delta, hue_delta) (np.random.randint's
    range, as mmseg), and whether contrast comes second (else last)."""
    s = aug.split_seed(seed, 9)
    coin = lambda i: tf.random.stateless_uniform([], s[i]) < 0.5  # noqa: E731
    uniform = lambda i, lo, hi: tf.random.stateless_uniform([], s[i], float(lo), float(hi))  # noqa: E731
    return {
        "brightness": coin(0), "beta": uniform(1, -brightness_delta, brightness_delta),
        "contrast_first": coin(2),
        "contrast": coin(3), "contrast_alpha": uniform(4, *contrast_range),
        "saturation": coin(5), "saturation_alpha": uniform(6, *saturation_range),
        "hue": coin(7),
        "hue_shift": tf.random.stateless_uniform([], s[8], -int(hue_delta), int(hue_delta), dtype=tf.int32),
    }


def apply_photometric(image: tf.Tensor, p: dict) -> tf.Tensor:
    """mmseg `PhotoMetricDistortion` with the draws ``p`` (`sample_photometric`), in its
    order: brightness (x + beta); contrast (x * alpha, a plain multiply as in mmseg)
    second if contrast_first; saturation (HSV S * alpha, clipped); hue (H + shift in
    OpenCV's 0..180 units, i.e. 2 degrees each, modulo 360 degrees); contrast last
    otherwise. Brightness and contrast clip to 0..255 and truncate to whole levels
    (mmseg's convert); HSV steps use TF's float HSV and round back to 0..255 (mmseg's
    OpenCV uint8 HSV rounds H to 2 degrees and S to 1/255 on the way: a level or two).
    """
    image = tf.cast(image, tf.float32)

    def maybe(flag, fn, x):
        return tf.cond(flag, lambda: fn(x), lambda: x)

    def contrast(x):
        return _convert(x, alpha=p["contrast_alpha"])

    def saturation(x):
        return aug.to_uint8_range(scale_hsv_saturation(x, p["saturation_alpha"]))

    def hue(x):
        return aug.to_uint8_range(shift_hsv_hue(x, tf.cast(p["hue_shift"], tf.float32) / 180.0))

    image = maybe(p["brightness"], lambda x: _convert(x, beta=p["beta"]), image)
    image = maybe(p["contrast_first"] & p["contrast"], contrast, image)
    image = maybe(p["saturation"], saturation, image)
    image = maybe(p["hue"], hue, image)
    image = maybe(~p["contrast_first"] & p["contrast"], contrast, image)
    return image


def _mod6(x: tf.Tensor) -> tf.Tensor:
    # x - 6 floor(x / 6), not tf.math.floormod: TF's float floormod is ~50x slower on CPU
    return x - 6.0 * tf.floor(x / 6.0)


def _value_and_chroma(image: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """[H, W, 3] -> (the R, G, B planes [H, W]; HSV's V = max channel; the chroma
    max - min = V·S), all on 0..255."""
    red, green, blue = aug.channel_planes(image)
    value = tf.maximum(tf.maximum(red, green), blue)
    return [red, green, blue], value, value - tf.minimum(tf.minimum(red, green), blue)


def scale_hsv_saturation(image: tf.Tensor, alpha) -> tf.Tensor:
    """HSV saturation times ``alpha``, clipped to 1, hue and value kept: float32 [H, W, 3]
    pixels in 0..255, unrounded.

    In RGB without the HSV round trip: each channel is c = V - V·S·f_c(H) (V the max
    channel, V·S the chroma max - min), so at the same H and V, c' = V - (V - c)·S'/S
    with S'/S = min(alpha, V / chroma). The values of TF's rgb_to_hsv/hsv_to_rgb up to
    float rounding, ~3x faster on CPU (TF's pair: ~7 ms for 512x512 on one thread).
    """
    planes, value, chroma = _value_and_chroma(image)
    # grey pixels (chroma 0) have c == V: any finite ratio leaves them as they are
    ratio = tf.minimum(tf.cast(alpha, tf.float32), value / tf.maximum(chroma, 1e-6))
    return aug.interleave_channels([value - (value - c) * ratio for c in planes])


def shift_hsv_hue(image: tf.Tensor, turns) -> tf.Tensor:
    """HSV hue plus ``turns`` of the colour wheel (modulo 1), saturation and value kept:
    float32 [H, W, 3] pixels in 0..255, unrounded.

    The HSV round trip in closed form (TF's rgb_to_hsv/hsv_to_rgb: ~11 ms for 512x512 on
    one CPU thread with the shift, this ~3x less): with V the max channel and C = V - min
    the chroma, the hue in sixths is h = (G - B)/C, (B - R)/C + 2 or (R - G)/C + 4 by
    which channel is the max (red first, then green, as TF), and channel n in
    (R: 5, G: 3, B: 1) comes back as V - C·clip(min(k, 4 - k), 0, 1) with
    k = (n + h') mod 6. Grey pixels (C = 0) stay as they are.
    """
    (red, green, blue), value, chroma = _value_and_chroma(image)
    safe = tf.maximum(chroma, 1e-6)
    # which channel is the max, as 0/1 masks (arithmetic: a per-pixel tf.where is slow)
    is_red = tf.cast(red >= value, tf.float32)
    is_green = tf.cast(green >= value, tf.float32) * (1.0 - is_red)
    is_blue = 1.0 - is_red - is_green
    sixths = (is_red * (green - blue) + is_green * (blue - red + 2.0 * safe) + is_blue * (red - green + 4.0 * safe)) / safe
    sixths = _mod6(sixths + 6.0 * tf.cast(turns, tf.float32))

    def channel(n):
        k = _mod6(sixths + n)
        return value - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)

    return aug.interleave_channels([channel(5.0), channel(3.0), channel(1.0)])


def photometric_distortion(image: tf.Tensor, seed: tf.Tensor, brightness_delta: float = 32.0,
                           contrast_range: Sequence[float] = (0.5, 1.5),
                           saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18) -> tf.Tensor:
    """mmseg `PhotoMetricDistortion` (each step with probability 0.5) seeded by ``seed``."""
    return apply_photometric(image, sample_photometric(seed, brightness_delta, contrast_range, saturation_range,
                                                       hue_delta))


def pad_to(image: tf.Tensor, label: tf.Tensor, height, width, image_value=0.0,
           label_value: int = IGNORE_INDEX) -> tuple[tf.Tensor, tf.Tensor]:
    """mmseg `Pad`: bottom/right padding to (height, width); image with ``image_value``
    (a scalar or one value per channel), label with ``label_value``."""
    shape = tf.shape(label)
    ph, pw = height - shape[0], width - shape[1]
    label = tf.pad(label, [[0, ph], [0, pw]], constant_values=label_value)
    if isinstance(image_value, (int, float)) and image_value == 0:
        # Zero padding (the float32 path, after normalisation): tf.pad alone, 40% of the
        # cost of the masked form below (bench_seg_input), the same pixels.
        return tf.pad(image, [[0, ph], [0, pw], [0, 0]]), label
    paddings = [[0, ph], [0, pw], [0, 0]]
    outside = tf.pad(tf.zeros_like(image), paddings, constant_values=1)
    image = tf.pad(image, paddings)
    if isinstance(height, int) and isinstance(width, int):
        # static: `per_channel` gives an image-shaped constant (a [3] operand broadcasts
        # element by element on TF's CPU kernels, ~6x slower)
        image.set_shape([height, width, 3])
        outside.set_shape([height, width, 3])
    values = np.broadcast_to(np.asarray(image_value, np.float32), [3])
    return image + outside * aug.per_channel(values, image, image.dtype), label  # inside: x + 0, exact
