"""Summing per-block work over blocks of output rows with a ``lax.scan``.

The CPU kernel gradients (`depthwise` and `dense_conv`) reduce over every output
position of a batch. Doing it a block of rows of one image at a time keeps each
block's inputs in cache and never materialises a batch-sized intermediate.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def rows_per_block(out_h: int, out_w: int, max_pixels: int) -> int:
    """The most output rows (a divisor of ``out_h``, at least 1) whose block holds at
    most ``max_pixels`` output pixels of width ``out_w``."""
    return max(r for r in range(1, out_h + 1) if out_h % r == 0 and (r == 1 or r * out_w <= max_pixels))


def sum_over_row_blocks(
    block_sum: Callable[[Array, Array], Array], init: Array, batch: int, out_h: int, rows: int
) -> Array:
    """``init + Σ block_sum(b, h)`` over images ``b`` and block starts ``h = 0, rows, …``.

    ``rows`` must divide ``out_h``; ``b`` and ``h`` are traced int32 scalars (use them
    with ``lax.dynamic_slice``). One scan step per block.
    """
    blocks_per_image = out_h // rows

    def step(acc: Array, index: Array) -> tuple[Array, None]:
        return acc + block_sum(index // blocks_per_image, (index % blocks_per_image) * rows), None

    return lax.scan(step, init, jnp.arange(batch * blocks_per_image))[0]
