"""Image augmentations as TensorFlow ops (eager or inside `tf.data`), all stateless.

Every random op takes ``seed``, an int64 tensor of shape [2], and uses only
`tf.random.stateless_*` / `tf.image.stateless_*`: the same seed gives the same result
eagerly, in `tf.data`, and after a resume. The recipe follows timm (what the
PoolFormer/VAN recipe that the paper reuses calls); per-op differences are noted.

Pixel convention: decoded images are float32 [H, W, 3] with integral values in
0..255 ("uint8 emulation", so RandAugment sees what PIL would) until `normalize`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

# PIL's antialiased bicubic resize (timm's): `resize` for crops, `resize_window` for eval.
from dmformer_jax.data.resize import resize, resize_window


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    """``num`` independent seeds [num, 2] derived from ``seed`` [2]."""
    return tf.random.experimental.stateless_split(seed, num)


def fold_seed(seed: tf.Tensor, data) -> tf.Tensor:
    """A seed [2] that depends on ``seed`` [2] and the integer ``data``."""
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))


def per_channel(values: Sequence[float], image: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """``values`` (one per channel) as a ``dtype`` constant to combine with ``image``
    [..., H, W, C]: of shape [H, W, C] when those dims are static, else [C].

    Why: TF's CPU kernels broadcast a [C] operand over an image element by element,
    ~6x slower than a same-shape operand (normalising a 224x224 image, one thread:
    0.79 vs 0.12 ms, 2026-11-27); the result is bit-identical. Over a batch the [H, W, C]
    constant broadcasts along the batch, which is fast.
    """
    values = np.asarray(values, np.float32).astype(tf.as_dtype(dtype).as_numpy_dtype)
    if image.shape.rank is not None and image.shape.rank >= 3 and image.shape[-3:].is_fully_defined():
        return tf.constant(np.ascontiguousarray(np.broadcast_to(values, image.shape[-3:].as_list())))
    return tf.constant(values)


def to_uint8_range(image: tf.Tensor) -> tf.Tensor:
    """Rounds and clips float pixels to integral values in 0..255 (as a PIL image would)."""
    return tf.clip_by_value(tf.round(image), 0.0, 255.0)


# --------------------------------------------------------------------------- decode


# PIL (what timm decodes with) uses libjpeg's accurate integer DCT; TF's default
# 'INTEGER_FAST' differs from it by ~1 level on average (up to 6), this one not at all.
DCT_METHOD = "INTEGER_ACCURATE"


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] (grey and CMYK JPEGs become RGB).

    JPEGs decode with the accurate integer DCT, as PIL does.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=DCT_METHOD),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def sample_crop_window(
    image_shape: tf.Tensor,
    seed: tf.Tensor,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tf.Tensor:
    """Random-resized-crop window [top, left, height, width] (int32) for an image of
    shape ``image_shape`` ([H, W] or [H, W, C]), by timm's rule
    (``RandomResizedCrop.get_params``), stateless:

    up to ``attempts`` tries of an area fraction uniform in ``scale`` and an aspect ratio
    (width/height) log-uniform in ``ratio``, sides ``round(sqrt(area·ratio))`` ×
    ``round(sqrt(area/ratio))``; the first that fits is placed uniformly. If none fits,
    a centre crop of the whole image with its ratio clamped into ``ratio``.
    (TF's ``sample_distorted_bounding_box`` samples the height uniformly instead, which
    skews the area: mean 0.370 vs timm's 0.433 of a 500×375 image.)
    """
    shape = tf.cast(image_shape, tf.int32)[:2]
    height, width = shape[0], shape[1]
    h64, w64 = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    s_area, s_ratio, s_top, s_left = tf.unstack(split_seed(seed, 4))
    target = tf.random.stateless_uniform([attempts], s_area, scale[0], scale[1], tf.float64) * h64 * w64
    log_ratio = tf.random.stateless_uniform([attempts], s_ratio, math.log(ratio[0]), math.log(ratio[1]), tf.float64)
    aspect = tf.exp(log_ratio)
    # Python's round() and tf.round both round half to even.
    cand_w = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    cand_h = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (cand_w > 0) & (cand_w <= width) & (cand_h > 0) & (cand_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    def sampled():
        h, w = cand_h[first], cand_w[first]
        top = tf.random.stateless_uniform([], s_top, 0, height - h + 1, tf.int32)
        left = tf.random.stateless_uniform([], s_left, 0, width - w + 1, tf.int32)
        return tf.stack([top, left, h, w])

    def centre():
        in_ratio = w64 / h64
        w = tf.where(in_ratio < ratio[0], width,
                     tf.where(in_ratio > ratio[1], tf.cast(tf.round(h64 * ratio[1]), tf.int32), width))
        h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w64 / ratio[0]), tf.int32), height)
        return tf.stack([(height - h) // 2, (width - w) // 2, h, w])

    return tf.cond(tf.reduce_any(fits), sampled, centre)


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Random-resized crop of a decoded image [H, W, 3] -> float32 [size, size, 3]."""
    window = sample_crop_window(tf.shape(image), seed, scale, ratio)
    crop = image[window[0] : window[0] + window[2], window[1] : window[1] + window[3]]
    return resize(crop, (size, size))


def decode_and_random_crop(
    encoded: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Encoded image -> random-resized crop float32 [size, size, 3].

    JPEGs decode only the crop window (`decode_and_crop_jpeg`, the expensive part of
    ImageNet input); other formats decode fully, then crop. Both use the same window.
    """

    def jpeg():
        window = sample_crop_window(tf.image.extract_jpeg_shape(encoded), seed, scale, ratio)
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=DCT_METHOD)

    def other():
        image = decode_image(encoded)
        window = sample_crop_window(tf.shape(image), seed, scale, ratio)
        return image[window[0] : window[0] + window[2], window[1] : window[1] + window[3]]

    crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    crop.set_shape([None, None, 3])
    return resize(crop, (size, size))


# ------------------------------------------------------------------ simple train ops


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip [H, W, C] with probability 0.5."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    # tf.reverse, not image[:, ::-1]: a negative-stride slice is ~14x slower on CPU.
    return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def channel_planes(image: tf.Tensor) -> list[tf.Tensor]:
    """[H, W, C] -> C planes [H, W]."""
    return [image[..., c] for c in range(image.shape[-1])]


def interleave_channels(planes: Sequence[tf.Tensor]) -> tf.Tensor:
    """C planes [H, W] -> [H, W, C]. Stacked on a new first axis and transposed: TF's CPU
    concat/stack along the last axis interleaves element by element, ~3x slower (3.0 vs
    1.1 ms for 512x512x3, one thread, 2026-11-28)."""
    return tf.transpose(tf.stack(list(planes), axis=0), [1, 2, 0])


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """ITU-R 601-2 luma (PIL's 'L' conversion) [H, W, 1], rounded."""
    # Channel slices, not a product with a [3] weight vector and a reduction over the
    # last axis: ~8x faster on TF's CPU kernels (2026-11-28), the same sums.
    red, green, blue = image[..., 0:1], image[..., 1:2], image[..., 2:3]
    return tf.round(red * 0.299 + green * 0.587 + blue * 0.114)


def blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's `Image.blend(degenerate, image, factor)`, clipped to 0..255."""
    return to_uint8_range(degenerate + factor * (image - degenerate))


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return blend(tf.zeros_like(image), image, factor)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    mean = tf.floor(tf.reduce_mean(grayscale(image)) + 0.5)
    return blend(tf.fill(tf.shape(image), mean), image, factor)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return blend(tf.broadcast_to(grayscale(image), tf.shape(image)), image, factor)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """torchvision `ColorJitter(strength, strength, strength)`: brightness, contrast and
    saturation factors uniform in [1 - s, 1 + s], applied in a random order."""
    if strength <= 0:
        return image
    seeds = split_seed(seed, 4)
    order = tf.argsort(tf.random.stateless_uniform([3], seeds[0]))
    factors = [tf.random.stateless_uniform([], seeds[i + 1], 1.0 - strength, 1.0 + strength) for i in range(3)]
    ops = [adjust_brightness, adjust_contrast, adjust_saturation]
    for step in range(3):
        branches = [lambda op=op, f=f: op(image, f) for op, f in zip(ops, factors)]
        image = tf.switch_case(order[step], branches)
    return image


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """0..255 pixels [..., H, W, C] -> (x / 255 - mean) / std, float32."""
    image = tf.cast(image, tf.float32)
    if image.shape.rank == 3 and not image.shape[-3:].is_fully_defined():
        # Dynamic size: per channel plane with scalar constants, then re-interleaved
        # (~2 ms for 512x512 on one CPU thread vs ~4 ms broadcasting a [3] operand);
        # the same arithmetic, so the same values.
        planes = channel_planes(image)
        return interleave_channels([(p / 255.0 - m) / s for p, m, s in zip(planes, mean, std)])
    return (image / 255.0 - per_channel(mean, image)) / per_channel(std, image)


def random_erasing(
    image: tf.Tensor,
    seed: tf.Tensor,
    probability: float = 0.25,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    attempts: int = 10,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> tf.Tensor:
    """timm `RandomErasing(probability, mode='pixel', max_count=1)` on a normalised
    image [H, W, C]: with probability ``probability``, one box (area fraction in
    [min_area, max_area], log-uniform aspect in [min_aspect, 1/min_aspect], first of
    ``attempts`` tries that fits strictly inside) is filled with N(0, 1) per pixel and
    channel. Everything outside the box is left untouched.

    ``pixel_mean``/``pixel_std`` (per channel, on the 0..1 scale, as given to
    `normalize`): the image is float pixels in 0..255 instead, and the box gets the same
    N(0, 1) draws mapped to pixels, ``255·(n·std + mean)`` (unclipped, like the
    normalised noise; the uint8 transfer clips).
    """
    if probability <= 0:
        return image
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    s = split_seed(seed, 6)
    apply = tf.random.stateless_uniform([], s[0]) < probability
    area = tf.random.stateless_uniform([attempts], s[1], min_area, max_area) * hf * wf
    log_r = tf.random.stateless_uniform([attempts], s[2], math.log(min_aspect), math.log(1 / min_aspect))
    aspect = tf.exp(log_r)
    eh = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (ew < w) & (eh < h)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    eh, ew = eh[first], ew[first]
    # randint(0, h - eh) inclusive, like Python's random.randint
    top = tf.cast(tf.floor(tf.random.stateless_uniform([], s[3]) * tf.cast(h - eh + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(tf.random.stateless_uniform([], s[4]) * tf.cast(w - ew + 1, tf.float32)), tf.int32)

    def erase():
        # Noise for the box only, as timm draws it; pasted with slices, not a full-image
        # mask and tf.where (~0.7 ms a 224x224 image on one CPU thread, the paste ~0.05).
        noise = tf.random.stateless_normal(tf.stack([eh, ew, shape[2]]), s[5], dtype=image.dtype)
        if pixel_mean is not None:
            noise = noise * tf.constant(np.float32(pixel_std) * 255) + tf.constant(np.float32(pixel_mean) * 255)
        return paste_box(image, noise, top, left)

    return tf.cond(apply & tf.reduce_any(fits), erase, lambda: image)


def paste_box(base: tf.Tensor, patch: tf.Tensor, top, left) -> tf.Tensor:
    """``base`` [..., H, W, C] with ``patch`` [..., h, w, C] written at rows
    [top, top + h) and columns [left, left + w) (the box must lie inside ``base``).

    Slices and concatenations (copies) instead of a box mask and `tf.where`: TF's CPU
    select kernel is ~7x slower than a copy (2026-11-28, one thread).
    """
    h, w = tf.shape(patch)[-3], tf.shape(patch)[-2]
    band = base[..., top : top + h, :, :]
    band = tf.concat([band[..., :left, :], patch, band[..., left + w :, :]], axis=-2)
    out = tf.concat([base[..., :top, :, :], band, base[..., top + h :, :, :]], axis=-3)
    # Keep the static shape: later per-channel ops take their fast path only with it
    # (`per_channel`).
    out.set_shape(base.shape)
    return out


# ---------------------------------------------------------------------------- eval


def eval_resize_crop(image: tf.Tensor, size: int, crop_pct: float) -> tf.Tensor:
    """timm eval transform: resize the shorter side to floor(size / crop_pct) (bicubic,
    antialiased; the longer side to int(scale * long / short) as torchvision does), then
    a centre crop of size x size. [H, W, 3] -> float32 [size, size, 3] in 0..255."""
    scale_size = math.floor(size / crop_pct)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)
    long_new = tf.cast(
        tf.floor(tf.cast(scale_size, tf.float64) * tf.cast(tf.maximum(h, w), tf.float64) / tf.cast(short, tf.float64)),
        tf.int32,
    )
    new_h = tf.where(h <= w, scale_size, long_new)
    new_w = tf.where(h <= w, long_new, scale_size)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    # Only the centre window of the resize is computed (~40% of a 500x375 photo's
    # resize to 341x256 lies outside it); the pixels are those of resize-then-crop.
    out = resize_window(image, tf.stack([new_h, new_w]), tf.stack([top, left]), (size, size))
    out.set_shape([size, size, 3])
    return out


# --------------------------------------------------------------------- batch mixing


def smooth_one_hot(labels: tf.Tensor, num_classes: int, smoothing: float) -> tf.Tensor:
    """int [B] -> float32 [B, num_classes]: 1 - smoothing + smoothing/K on the label,
    smoothing/K elsewhere (timm's `mixup_target` convention; rows sum to 1)."""
    off = smoothing / num_classes
    return tf.one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off, dtype=tf.float32)


def sample_beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    """One Beta(alpha, alpha) sample from two stateless Gamma draws."""
    s = split_seed(seed, 2)
    a = tf.random.stateless_gamma([], s[0], alpha=alpha)
    b = tf.random.stateless_gamma([], s[1], alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def cutmix_box(seed: tf.Tensor, height, width, lam: tf.Tensor) -> tf.Tensor:
    """timm `rand_bbox`: a box of sides int(H*sqrt(1-lam)), int(W*sqrt(1-lam)) centred
    at a uniform pixel, clipped to the image. Returns [y0, y1, x0, x1] int32."""
    s = split_seed(seed, 2)
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.floor(tf.cast(height, tf.float32) * cut), tf.int32)
    cut_w = tf.cast(tf.floor(tf.cast(width, tf.float32) * cut), tf.int32)
    cy = tf.random.stateless_uniform([], s[0], 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], s[1], 0, width, dtype=tf.int32)
    y0 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y1 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x0 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x1 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    return tf.stack([y0, y1, x0, x1])


def mix_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    seed: tf.Tensor,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
    smoothing: float = 0.1,
) -> tuple[tf.Tensor, tf.Tensor]:
    """timm `Mixup(mode='batch', prob=1, correct_lam=True)` on one batch.

    images float32 [B, H, W, C], labels int [B] -> (mixed images, soft labels float32
    [B, num_classes]). Example i is mixed with example B-1-i (the batch reversed) with
    one lambda for the batch: CutMix with probability ``switch_prob`` when both alphas
    are > 0 (lambda then re-computed as 1 - box area / image area), MixUp otherwise.
    Targets: lam * smooth(y) + (1 - lam) * smooth(reversed y). With both alphas 0 the
    images are unchanged and the targets are one-hot with label smoothing.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    targets = smooth_one_hot(labels, num_classes, smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    s = split_seed(seed, 4)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], s[0]) < switch_prob
    else:
        use_cutmix = tf.constant(cutmix_alpha > 0)
    lam_mix = sample_beta(s[1], mixup_alpha) if mixup_alpha > 0 else tf.constant(1.0)
    lam_cut = sample_beta(s[2], cutmix_alpha) if cutmix_alpha > 0 else tf.constant(1.0)
    shape = tf.shape(images)
    h, w = shape[1], shape[2]

    def cutmix():
        y0, y1, x0, x1 = tf.unstack(cutmix_box(s[3], h, w, lam_cut))
        area = tf.cast((y1 - y0) * (x1 - x0), tf.float32)
        lam = 1.0 - area / tf.cast(h * w, tf.float32)
        # negative strides are slow on CPU: tf.reverse, not [::-1]
        return paste_box(images, tf.reverse(images[:, y0:y1, x0:x1], [0]), y0, x0), lam

    def mixup():
        return images * lam_mix + tf.reverse(images, [0]) * (1.0 - lam_mix), lam_mix

    mixed, lam = tf.cond(use_cutmix, cutmix, mixup)
    soft = targets * lam + targets[::-1] * (1.0 - lam)
    return mixed, soft
