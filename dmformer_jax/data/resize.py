"""PIL's antialiased bicubic resize (what timm's transforms call) as TensorFlow ops.

``Image.resize(size, Image.BICUBIC)`` on an 8-bit image is separable: for each output
column a normalised window of Keys-cubic (a = -0.5) weights, stretched by the scale
factor when shrinking (the antialiasing), and the same for each output row; one pass
after the other, rounded to 8 bits in between (`precompute_coeffs` and
`ImagingResample` in Pillow's ``Resample.c``; which pass runs first:
`vertical_pass_first`). This module computes the same weights in float64 and applies
them in the same order with the same rounding, so it matches PIL to within one level, on ~5 values in 10^5 of
photo-sized crops (float32 sums against PIL's 22-bit fixed point land apart near a
rounding tie; up to 5 in 10^4 for exact 2x enlargements, whose border pixels hit exact
ties; `tests/test_resize.py`).

Why not ``tf.image.resize(..., 'bicubic', antialias=True)``: its `ScaleAndTranslate`
kernel samples the cubic differently (up to 9 levels from PIL when enlarging, 1-2
when shrinking, ~20% of pixels off) and costs ~1.8 ms per 224² training crop on one
core, the largest single cost of the training stream. Here each pass is a batched
matmul: output positions are cut into blocks of a few, each block's weights cover one
contiguous band of input rows, and the bands are gathered into a [blocks, band, …]
tensor (~1.4 ms per 224² training crop on one core; docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

# Output positions per matmul block: the band each block reads is ~block·scale + 4·scale
# rows, so small blocks waste fewer multiply-adds on zero weights; below ~8 the matmuls
# get too small (measured 4 / 8 / 16 / 32: 1.30 / 1.27 / 1.29 / 1.49 ms per crop).
MAX_BLOCK = 8
CUBIC_A = -0.5  # PIL's bicubic (Keys) coefficient
SUPPORT = 2.0  # the cubic's support in input pixels at scale 1


def _block_size(n: int) -> int:
    """The largest divisor of ``n`` that is at most `MAX_BLOCK`."""
    return max(d for d in range(1, MAX_BLOCK + 1) if n % d == 0)


def _cubic(x: tf.Tensor) -> tf.Tensor:
    """PIL's ``bicubic_filter``: Keys' cubic with a = -0.5, zero beyond |x| = 2."""
    a = CUBIC_A
    x = tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def axis_weights(in_size: tf.Tensor, out_size: tf.Tensor, offset: tf.Tensor, count: int):
    """PIL's weights for outputs ``offset … offset + count − 1`` of resizing one axis of
    length ``in_size`` to ``out_size`` (all int32 scalars; ``count`` static).

    Returns ``(index, weights)``: ``index`` int32 [blocks, band], the input positions
    each block of `_block_size(count)` outputs reads (a contiguous band inside the
    image), and ``weights`` float32 [blocks, block, band], each output's normalised
    weights over its block's band (zero outside PIL's window for that output).
    """
    block = _block_size(count)
    blocks = count // block
    in_f = tf.cast(in_size, tf.float64)
    scale = in_f / tf.cast(out_size, tf.float64)
    stretch = tf.maximum(scale, 1.0)  # antialiasing: widen the kernel when shrinking
    support = SUPPORT * stretch
    centre = (tf.cast(offset, tf.float64) + tf.range(count, dtype=tf.float64) + 0.5) * scale
    # PIL truncates centre ± support + 0.5 to int and clips to the image.
    first = tf.reshape(tf.maximum(tf.floor(centre - support + 0.5), 0.0), [blocks, block])
    end = tf.reshape(tf.minimum(tf.floor(centre + support + 0.5), in_f), [blocks, block])
    band = tf.cast(tf.reduce_max(end[:, -1] - first[:, 0]), tf.int32)
    # Windows only move forward, so a block's band starts at its first output's window;
    # moved back where needed to stay inside the image (band <= in_size).
    start = tf.minimum(tf.cast(first[:, 0], tf.int32), in_size - band)
    index = start[:, None] + tf.range(band)[None, :]
    position = tf.cast(index, tf.float64)[:, None, :]  # [blocks, 1, band]
    weights = _cubic((position - tf.reshape(centre, [blocks, block, 1]) + 0.5) / stretch)
    inside = (position >= first[..., None]) & (position < end[..., None])
    weights = tf.where(inside, weights, tf.zeros_like(weights))
    weights = tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=-1, keepdims=True))
    return index, tf.cast(weights, tf.float32)


def _resample_rows(rows: tf.Tensor, index: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """One pass along the leading axis: ``rows`` [L, M] (any real dtype), ``index``
    [blocks, band], ``weights`` [blocks, block, band] -> float32 [blocks·block, M],
    rounded half up and clipped to 0..255 as PIL's 8-bit passes are."""
    bands = tf.cast(tf.gather(rows, index), tf.float32)  # [blocks, band, M]
    out = tf.matmul(weights, bands)  # [blocks, block, M]
    out = tf.reshape(out, [-1, tf.shape(rows)[1]])
    return tf.clip_by_value(tf.floor(out + 0.5), 0.0, 255.0)


def _swapped_rows(pixels: tf.Tensor) -> tf.Tensor:
    """[A, B, C] -> [B, A·C]: the other pixel axis as the rows a pass contracts."""
    return tf.reshape(tf.transpose(pixels, [1, 0, 2]), [tf.shape(pixels)[1], -1])


def _horizontal_first(image, index_y, weights_y, index_x, weights_x, out_h, out_w, channels):
    """Columns, then rows -> [out_h, out_w·C]; the column pass only on the rows the row
    pass reads."""
    first = index_y[0, 0]
    rows = image[first : index_y[-1, -1] + 1]  # [r, W, C]
    columns = _resample_rows(_swapped_rows(rows), index_x, weights_x)  # [out_w, r·C]
    columns = tf.reshape(columns, [out_w, -1, channels])
    return _resample_rows(_swapped_rows(columns), index_y - first, weights_y)


def _vertical_first(image, index_y, weights_y, index_x, weights_x, out_h, out_w, channels):
    """Rows, then columns -> [out_h, out_w·C]; the row pass only on the columns the
    column pass reads."""
    first = index_x[0, 0]
    columns = image[:, first : index_x[-1, -1] + 1]  # [H, c, C]
    rows = _resample_rows(tf.reshape(columns, [tf.shape(columns)[0], -1]), index_y, weights_y)  # [out_h, c·C]
    rows = tf.reshape(rows, [out_h, -1, channels])
    out = _resample_rows(_swapped_rows(rows), index_x - first, weights_x)  # [out_w, out_h·C]
    return _swapped_rows(tf.reshape(out, [out_w, out_h, channels]))


def vertical_pass_first(height: tf.Tensor, width: tf.Tensor, out_h: tf.Tensor, out_w: tf.Tensor) -> tf.Tensor:
    """Whether Pillow >= 13 resamples the rows first (python-pillow/Pillow#9549): when the
    height shrinks by more than twice as many pixels as the width does. Older Pillow
    always did the columns first. The order matters by a level where the rounding (or
    clipping of the cubic's overshoot) between the passes falls differently."""
    return (out_h < height) & (height - out_h > 2 * (width - out_w))


def resize_window(
    image: tf.Tensor, resized_size: tf.Tensor, top_left: tf.Tensor, window: Sequence[int]
) -> tf.Tensor:
    """The ``window`` = (h, w) pixels at ``top_left`` of PIL's bicubic resize of
    ``image`` [H, W, C] (values 0..255, any real dtype) to ``resized_size`` (int32 [2],
    (H', W'); may be dynamic) -> float32 [h, w, C] with integral values in 0..255.

    Equal to resizing the whole image and cropping, but computes only the window.
    """
    out_h, out_w = window
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    channels = image.shape[-1] if image.shape[-1] is not None else shape[2]
    resized_size = tf.convert_to_tensor(resized_size, tf.int32)
    top_left = tf.convert_to_tensor(top_left, tf.int32)
    index_y, weights_y = axis_weights(height, resized_size[0], top_left[0], out_h)
    index_x, weights_x = axis_weights(width, resized_size[1], top_left[1], out_w)
    args = (image, index_y, weights_y, index_x, weights_x, out_h, out_w, channels)
    out = tf.cond(
        vertical_pass_first(height, width, resized_size[0], resized_size[1]),
        lambda: _vertical_first(*args),
        lambda: _horizontal_first(*args),
    )
    return tf.reshape(out, [out_h, out_w, channels])


def resize(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """PIL's ``Image.resize((w, h), Image.BICUBIC)`` of ``image`` [H, W, C] to ``size`` =
    (h, w) -> float32 [h, w, C] with integral values in 0..255."""
    return resize_window(image, tf.constant(list(size), tf.int32), tf.zeros([2], tf.int32), size)
