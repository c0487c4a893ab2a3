"""Depth-wise convolution implementations that share one parameter layout.

All take NHWC inputs ``x`` ``(B, H, W, C)`` and a ``flax.linen.Conv``-layout kernel
``(k, k, 1, C)`` and return ``(B, H', W', C)`` for a stride-1 dilated convolution
with symmetric zero padding ``padding`` (``H' = H + 2·padding − d·(k−1)``).

Implementations (timings in ``docs/benchmarks.md``):
  - ``'xla'``: ``lax.conv_general_dilated(feature_group_count=C)``, what
    ``nn.Conv`` runs. The TPU default; slow on XLA's CPU backend and, in training,
    on GPU (cuDNN's grouped-conv backward).
  - ``'shift_add'``: the same arithmetic as a sum of k² shifted, per-channel scaled
    slices, which XLA fuses into one elementwise loop, summed in float32; gradients by
    autodiff (the kernel gradient is k² full-size reductions: slow on CPU, the fastest
    training path measured on GPU).
  - ``'shift_add_vjp'``: the shift-and-add forward with a custom VJP. The input
    gradient is the same shift-and-add (flipped kernel on the output gradient). The
    kernel gradient ``dK[i, j, c] = Σ_{b,h,w} x_pad[b, h+i·d, w+j·d, c]·g[b, h, w, c]``
    is computed a block of output rows at a time inside a ``lax.scan``: the block's
    k² tap sums are reduced while its rows are in cache. So the activations are read
    from memory once, not k² times, and XLA's CPU backend sees k² small reductions per
    block rather than k² strided reductions over the whole batch. (Until 2026-11-28
    the k² products of one row were stacked and summed by a GEMV with ones: ~2× slower
    for the 7×7 branch at 56×56 and at 14×14.)

``'auto'`` picks per backend (`resolve_impl`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from dmformer_jax.models.impls import resolve
from dmformer_jax.models.row_blocks import rows_per_block, sum_over_row_blocks

Array = jax.Array
DepthwiseFn = Callable[..., Array]


def xla_depthwise(x: Array, kernel: Array, *, dilation: int, padding: int) -> Array:
    """Depth-wise conv via XLA's grouped convolution (``nn.Conv``'s own path)."""
    channels = x.shape[-1]
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def _pad_hw(x: Array, padding: int) -> Array:
    """Zero-pads (or, for negative ``padding``, crops) H and W symmetrically."""
    zero = jnp.zeros((), x.dtype)
    cfg = ((0, 0, 0), (padding, padding, 0), (padding, padding, 0), (0, 0, 0))
    return lax.pad(x, zero, cfg)


def _windows(x_pad: Array, k_h: int, k_w: int, dilation: int, out_h: int, out_w: int):
    """Yields ``(i, j, x_pad[:, i·d : i·d+out_h, j·d : j·d+out_w, :])``."""
    batch, _, _, channels = x_pad.shape
    for i in range(k_h):
        for j in range(k_w):
            start = (0, i * dilation, j * dilation, 0)
            limit = (batch, i * dilation + out_h, j * dilation + out_w, channels)
            yield i, j, lax.slice(x_pad, start, limit)


def shift_add_depthwise(x: Array, kernel: Array, *, dilation: int, padding: int) -> Array:
    """Depth-wise conv as ``Σ_{i,j} kernel[i, j, 0, :] · x_pad[:, i·d:, j·d:, :]``."""
    k_h, k_w = kernel.shape[0], kernel.shape[1]
    x_pad = _pad_hw(x, padding)
    out_h = x_pad.shape[1] - dilation * (k_h - 1)
    out_w = x_pad.shape[2] - dilation * (k_w - 1)
    # Sum the k² taps in float32 (XLA fuses the casts: memory traffic stays in x's
    # dtype). Under autodiff this also makes the kernel gradient's reductions over
    # (B, H, W) accumulate in float32; in bfloat16 they lost up to 16% (measured).
    acc = jnp.promote_types(x.dtype, jnp.float32)
    out = None
    for i, j, window in _windows(x_pad, k_h, k_w, dilation, out_h, out_w):
        term = window.astype(acc) * kernel[i, j, 0].astype(acc)
        out = term if out is None else out + term
    return out.astype(x.dtype)


# Rows per scan step of the kernel gradient, measured on XLA:CPU (dmformer_s, batch 32,
# 2-core AVX-512 EPYC, 2026-11-28; docs/benchmarks.md): one row when rows are wide
# (W' ≥ 28: more rows per step were 1.5–3× slower), else whole groups of rows up to
# ~112 output pixels per step (W' = 14: 7 rows, 2× faster than one), since a narrow
# row leaves each step too little work for its fixed cost.
WIDE_ROW = 28
PIXELS_PER_STEP = 112


def _rows_per_step(out_h: int, out_w: int) -> int:
    """How many output rows one scan step of `_kernel_grad` covers (divides ``out_h``)."""
    return 1 if out_w >= WIDE_ROW else rows_per_block(out_h, out_w, PIXELS_PER_STEP)


def _kernel_grad(x: Array, g: Array, k_h: int, k_w: int, dilation: int, padding: int) -> Array:
    """``dK`` ``(k_h, k_w, 1, C)`` in float32 from ``x`` ``(B, H, W, C)`` and ``g`` ``(B, H', W', C)``.

    One scan step per block of R output rows of one image (`_rows_per_step`): the k²
    tap sums ``Σ_{rows, w} x_window · g`` of the block, read from cache (see the
    module docstring).
    """
    batch, out_h, out_w, channels = g.shape
    x_pad = _pad_hw(x, padding)
    rows = _rows_per_step(out_h, out_w)
    span_h = dilation * (k_h - 1) + rows

    def block_sum(b: Array, h: Array) -> Array:
        x_rows = lax.dynamic_slice(
            x_pad, (b, h, 0, 0), (1, span_h, x_pad.shape[2], channels)
        ).astype(jnp.float32)
        g_rows = lax.dynamic_slice(g, (b, h, 0, 0), (1, rows, out_w, channels)).astype(jnp.float32)
        taps = [
            jnp.sum(win * g_rows, axis=(0, 1, 2))
            for _, _, win in _windows(x_rows, k_h, k_w, dilation, rows, out_w)
        ]
        return jnp.concatenate(taps)

    init = jnp.zeros((k_h * k_w * channels,), jnp.float32)
    return sum_over_row_blocks(block_sum, init, batch, out_h, rows).reshape(k_h, k_w, 1, channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_add_vjp(x: Array, kernel: Array, dilation: int, padding: int) -> Array:
    return shift_add_depthwise(x, kernel, dilation=dilation, padding=padding)


def _shift_add_vjp_fwd(x, kernel, dilation, padding):
    return shift_add_depthwise(x, kernel, dilation=dilation, padding=padding), (x, kernel)


def _shift_add_vjp_bwd(dilation, padding, residuals, g):
    x, kernel = residuals
    k_h, k_w = kernel.shape[0], kernel.shape[1]
    # The transpose of a stride-1 correlation is the correlation of g with the
    # flipped kernel, padded by d·(k−1) − p (negative: crop), which restores H×W.
    flipped = kernel[::-1, ::-1]
    back_pad = dilation * (k_h - 1) - padding
    dx = shift_add_depthwise(g, flipped, dilation=dilation, padding=back_pad)
    dk = _kernel_grad(x, g, k_h, k_w, dilation, padding)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_shift_add_vjp.defvjp(_shift_add_vjp_fwd, _shift_add_vjp_bwd)


def shift_add_vjp_depthwise(x: Array, kernel: Array, *, dilation: int, padding: int) -> Array:
    """`shift_add_depthwise` with a custom VJP whose kernel gradient is one pass."""
    if kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"shift_add_vjp needs a square kernel, got {kernel.shape[:2]}")
    return _shift_add_vjp(x, kernel, dilation, padding)


IMPLEMENTATIONS: dict[str, DepthwiseFn] = {
    "xla": xla_depthwise,
    "shift_add": shift_add_depthwise,
    "shift_add_vjp": shift_add_vjp_depthwise,
}

# Chosen from measurement (docs/benchmarks.md): on the CPU backend XLA's grouped conv
# is far slower than the fused shift-and-add, and the custom VJP makes training several
# times faster than autodiff of it. On GPU (H100, bf16 training) autodiff of the
# shift-and-add beat cuDNN's grouped conv, whose backward is slow, and the row scan of
# the custom VJP is a poor fit. TPU keeps XLA's conv until it is measured.
DEFAULT_IMPL_BY_BACKEND: dict[str, str] = {
    "cpu": "shift_add_vjp",
    "gpu": "shift_add",
    "tpu": "xla",
}


def available_impls() -> list[str]:
    """Names accepted by ``impl`` (besides ``'auto'``)."""
    return sorted(IMPLEMENTATIONS)


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """Turns ``'auto'`` into the default for ``backend`` (default: JAX's backend)."""
    return resolve(impl, IMPLEMENTATIONS, DEFAULT_IMPL_BY_BACKEND, "depth-wise", backend)


def depthwise_conv2d(
    x: Array, kernel: Array, *, dilation: int = 1, padding: int = 0, impl: str = "auto"
) -> Array:
    """Stride-1 depth-wise conv. ``x`` ``(B, H, W, C)``, ``kernel`` ``(k, k, 1, C)``.

    Returns ``(B, H + 2·padding − d·(k−1), W + 2·padding − d·(k−1), C)``.
    """
    if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(
            f"depth-wise kernel must be (k, k, 1, C={x.shape[-1]}), got {kernel.shape}"
        )
    return IMPLEMENTATIONS[resolve_impl(impl)](x, kernel, dilation=dilation, padding=padding)
