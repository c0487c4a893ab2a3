"""RandAugment as timm's ``rand-m9-mstd0.5-inc1``, in stateless TensorFlow ops.

timm (`timm/data/auto_augment.py`, `rand_augment_transform`): ``num_ops`` ops drawn
uniformly WITH replacement from the 15-op 'increasing' set; each is applied with
probability 0.5; each application draws its magnitude from N(magnitude, std) clipped
to [0, 10]; signed ops (rotate, shear, translate, enhance) flip the sign with
probability 0.5. Level -> argument, for a magnitude m on timm's 0..10 scale:

  Rotate: 30*m/10 degrees | ShearX/Y: 0.3*m/10 | TranslateX/YRel: 0.45*m/10 of the side
  Color/Contrast/Brightness/SharpnessIncreasing: factor 1 +- 0.9*m/10
  PosterizeIncreasing: keep 4 - int(0.4*m) bits | SolarizeIncreasing: threshold 256 - int(25.6*m)
  SolarizeAdd: add int(11*m) below 128 | AutoContrast, Equalize, Invert: no argument

Differences from timm (documented in docs/data.md): geometric ops use bilinear
interpolation only (timm picks bilinear or bicubic at random); the fill colour is timm's ImageNet mean
(124, 116, 104) as for timm's ImageNet configs.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from dmformer_jax.data.augment import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    blend,
    per_channel,
    split_seed,
    to_uint8_range,
)

MAX_LEVEL = 10.0
FILL = (124.0, 116.0, 104.0)  # timm: round(255 * IMAGENET_DEFAULT_MEAN)

OP_NAMES = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


# ---------------------------------------------------------------- pixel-level ops


def _as_rows(image: tf.Tensor) -> tf.Tensor:
    """[H, W, C] -> [H, W·C] (a free reshape): TF's CPU kernels reduce and broadcast along
    a long contiguous row far faster than over a trailing axis of 3 (autocontrast on a
    224² image, one thread: 0.99 -> 0.28 ms, 2026-11-28)."""
    shape = tf.shape(image)
    return tf.reshape(image, [shape[0], shape[1] * shape[2]])


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """PIL `ImageOps.autocontrast` (cutoff 0), per channel: stretch [min, max] to 0..255."""
    width, channels = tf.shape(image)[1], image.shape[-1]
    rows = _as_rows(image)
    lo = tf.reduce_min(tf.reshape(tf.reduce_min(rows, axis=0), [width, channels]), axis=0)
    hi = tf.reduce_max(tf.reshape(tf.reduce_max(rows, axis=0), [width, channels]), axis=0)
    # A flat channel (hi == lo) maps through offset 0 and scale 1, i.e. stays as it is
    # (integral values): no per-pixel tf.where, which TF's CPU kernels run ~7x slower
    # than arithmetic.
    flat = hi <= lo
    scale = tf.where(flat, 1.0, 255.0 / tf.maximum(hi - lo, 1.0))
    lo = tf.where(flat, 0.0, lo)
    # Per-channel values as one [W·C] row, broadcast down the rows.
    lo_row, scale_row = tf.tile(lo, [width])[None], tf.tile(scale, [width])[None]
    out = tf.floor(tf.clip_by_value((rows - lo_row) * scale_row, 0.0, 255.0))
    return tf.reshape(out, tf.shape(image))


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL `ImageOps.equalize`, per channel (histogram equalisation via a lookup table).

    All channels at once: channel c's levels are counted in bins 256·c + level of one
    `bincount` and mapped through one gather from the channels' stacked tables
    (1.87 -> 1.27 ms a 224² image, one thread, against a bincount and a gather per
    channel plane; 2026-11-28).
    """
    channels = image.shape[-1]
    levels = tf.range(256)
    bins = tf.cast(image, tf.int32) + per_channel(np.arange(channels) * 256, image, tf.int32)
    hist = tf.reshape(
        tf.math.bincount(tf.reshape(bins, [-1]), minlength=256 * channels, maxlength=256 * channels),
        [channels, 256],
    )
    # PIL: step = (pixel count - the count of the highest level present) // 255
    top = tf.reduce_max(tf.where(hist > 0, levels[None], -1), axis=1)
    step = (tf.reduce_sum(hist, axis=1) - tf.gather(hist, top, batch_dims=1)) // 255
    safe = tf.maximum(step, 1)[:, None]
    lut = tf.minimum((tf.cumsum(hist, axis=1, exclusive=True) + safe // 2) // safe, 255)
    lut = tf.where((step > 0)[:, None], lut, levels[None])  # step 0: the channel as it is
    return tf.cast(tf.gather(tf.reshape(lut, [-1]), bins), tf.float32)


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """Keep the ``bits`` high bits of each 8-bit value."""
    shift = tf.cast(2 ** (8 - tf.clip_by_value(bits, 0, 8)), tf.float32)
    return tf.floor(image / shift) * shift


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """Invert the values >= threshold."""
    # arithmetic, not tf.where (see autocontrast); exact for integral pixel values
    inverted = tf.cast(image >= threshold, image.dtype)
    return image + inverted * (255.0 - 2.0 * image)


def solarize_add(image: tf.Tensor, addition: tf.Tensor, threshold: float = 128.0) -> tf.Tensor:
    """Add ``addition`` to the values < threshold, clipped at 255."""
    below = tf.cast(image < threshold, image.dtype)  # arithmetic, not tf.where (see autocontrast)
    return tf.minimum(image + below * addition, 255.0)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL `ImageEnhance.Sharpness`: blend with the SMOOTH-filtered image (border kept)."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = to_uint8_range(smooth)
    degenerate = tf.pad(smooth - image[1:-1, 1:-1], [[1, 1], [1, 1], [0, 0]]) + image
    return blend(degenerate, image, factor)


# -------------------------------------------------------------------- geometric ops


def affine(image: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """PIL's `Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=FILL)`.

    ``matrix`` = [a, b, c, d, e, f]: output point (x, y) samples the input at
    (a x + b y + c, d x + e y + f) in PIL's continuous coordinates (pixel centres at
    +0.5); converted here to TF's index coordinates (centres at integers).
    """
    a, b, c, d, e, f = tf.unstack(tf.cast(matrix, tf.float32))
    c = c + 0.5 * (a + b) - 0.5
    f = f + 0.5 * (d + e) - 0.5
    transform = tf.stack([a, b, c, d, e, f, 0.0, 0.0])[None]
    fill = per_channel(FILL, image)  # image-shaped when static: no slow per-element broadcast
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(image - fill)[None],  # fill 0 here is FILL after adding it back: TF fills one scalar
        transforms=transform,
        output_shape=shape[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    return to_uint8_range(out + fill)


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """PIL `Image.rotate(degrees)`: counter-clockwise about (W/2, H/2), same size."""
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = shape[1] / 2.0, shape[0] / 2.0
    t = -degrees * (math.pi / 180.0)
    a, b = tf.cos(t), tf.sin(t)
    d, e = -tf.sin(t), tf.cos(t)
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return affine(image, tf.stack([a, b, c, d, e, f]))


def shear_x(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return affine(image, tf.stack([1.0, factor, 0.0, 0.0, 1.0, 0.0]))


def shear_y(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return affine(image, tf.stack([1.0, 0.0, 0.0, factor, 1.0, 0.0]))


def translate_x(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
    """PIL's AFFINE (1, 0, pixels, 0, 1, 0): column x samples the input at x + pixels."""
    return _translate(image, pixels, axis=1)


def translate_y(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
    """PIL's AFFINE (1, 0, 0, 0, 1, pixels): row y samples the input at y + pixels."""
    return _translate(image, pixels, axis=0)


def _translate(image: tf.Tensor, pixels: tf.Tensor, axis: int) -> tf.Tensor:
    """`affine`'s translation along ``axis`` of an [H, W, C] image; for a static shape as
    two slices of the padded image: ``out[i] = (1 − f)·in[i + k] + f·in[i + k + 1]`` with
    ``k = ⌊pixels⌋``, ``f = pixels − k`` and FILL outside the image.

    The bilinear weights of `affine` for a pure translation, with one ``f`` for every
    pixel where `affine` rounds each sample position (so a rounding tie may land one
    level apart). Why: ~2× faster along x and ~5× along y than
    ``ImageProjectiveTransformV3`` (1.5 → 0.7 and 1.6 → 0.3 ms a 224² image, one thread,
    2026-11-28).
    """
    pixels = tf.cast(pixels, tf.float32)
    if not image.shape.is_fully_defined():
        matrix = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        matrix[2 if axis == 1 else 5] = pixels
        return affine(image, tf.stack(matrix))
    size = image.shape[axis]
    k = tf.floor(pixels)
    f = pixels - k
    # Beyond ±(size + 1) every sample is fill: clamp so the slices stay in the padding.
    k = tf.cast(tf.clip_by_value(k, -size - 1.0, float(size)), tf.int32)
    fill = per_channel(FILL, image)
    padding = [[0, 0], [0, 0], [0, 0]]
    padding[axis] = [size + 1, size + 2]
    padded = tf.pad(image - fill, padding)  # 0 here is FILL once it is added back
    zero = tf.constant(0, tf.int32)
    begin = [zero, zero, zero]
    begin[axis] = size + 1 + k
    lower = tf.slice(padded, tf.stack(begin), image.shape)
    begin[axis] = size + 2 + k
    upper = tf.slice(padded, tf.stack(begin), image.shape)
    return to_uint8_range((1.0 - f) * lower + f * upper + fill)


# ---------------------------------------------------------------------- the policy


def apply_op(image: tf.Tensor, index: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Op number ``index`` of `OP_NAMES` at ``magnitude`` (0..10); ``sign`` is +-1."""
    level = magnitude / MAX_LEVEL
    shape = tf.cast(tf.shape(image), tf.float32)
    enhance = 1.0 + sign * 0.9 * level
    branches = [
        lambda: autocontrast(image),
        lambda: equalize(image),
        lambda: 255.0 - image,
        lambda: rotate(image, sign * 30.0 * level),
        lambda: posterize(image, 4 - tf.cast(tf.floor(level * 4.0), tf.int32)),
        lambda: solarize(image, 256.0 - tf.floor(level * 256.0)),
        lambda: solarize_add(image, tf.floor(level * 110.0)),
        lambda: adjust_saturation(image, enhance),
        lambda: adjust_contrast(image, enhance),
        lambda: adjust_brightness(image, enhance),
        lambda: sharpness(image, enhance),
        lambda: shear_x(image, sign * 0.3 * level),
        lambda: shear_y(image, sign * 0.3 * level),
        lambda: translate_x(image, sign * 0.45 * level * shape[1]),
        lambda: translate_y(image, sign * 0.45 * level * shape[0]),
    ]
    out = tf.switch_case(tf.cast(index, tf.int32), branches)
    out.set_shape(image.shape)
    return out


def rand_augment(
    image: tf.Tensor,
    seed: tf.Tensor,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    prob: float = 0.5,
) -> tf.Tensor:
    """timm RandAugment ('increasing' op set) on float32 [H, W, 3] pixels in 0..255."""
    seeds = split_seed(seed, num_ops)
    for i in range(num_ops):
        s = split_seed(seeds[i], 4)
        index = tf.random.stateless_uniform([], s[0], 0, len(OP_NAMES), dtype=tf.int32)
        apply = tf.random.stateless_uniform([], s[1]) < prob
        m = magnitude
        if magnitude_std > 0:
            m = magnitude + magnitude_std * tf.random.stateless_normal([], s[2])
        m = tf.clip_by_value(tf.cast(m, tf.float32), 0.0, MAX_LEVEL)
        sign = tf.where(tf.random.stateless_uniform([], s[3]) < 0.5, -1.0, 1.0)
        image = tf.cond(apply, lambda: apply_op(image, index, m, sign), lambda: image)
    return image
