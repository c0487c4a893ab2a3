"""Dense (not depth-wise) convolutions: the stem, the downsampling convs and every 1×1.

All take NHWC inputs ``x`` ``(B, H, W, C_in)`` and an ``nn.Conv``-layout kernel
``(k, k, C_in, C_out)`` and return ``(B, H', W', C_out)`` with
``H' = (H + 2·padding − k) // stride + 1``. The parameters are the same whichever
implementation runs, so checkpoints do not depend on it.

Implementations (timings in ``docs/benchmarks.md``):
  - ``'xla'``: ``lax.conv_general_dilated``, what ``nn.Conv`` runs.
  - ``'im2col'``: a 1×1 stride-1 conv is one ``dot_general`` over channels. A k×k
    conv keeps XLA's forward but gets a custom VJP that differentiates the im2col
    formulation instead: ``patches (B, H', W', k²·C_in) @ kernel (k²·C_in, C_out)``,
    where ``patches`` stacks the k² strided slices of the padded input. Both
    gradients become one matmul each plus slice/pad bookkeeping that XLA fuses.
    Why: on XLA's CPU backend the backward of ``conv_general_dilated`` is the slow
    part while its forward is fast (figures: docs/benchmarks.md, "Dense convolution
    implementations").
  - ``'im2col_tconv'``: as ``'im2col'``, except that the input gradient of a
    stride-1 k×k conv (the stem's 3×3 conv) is XLA's *forward* conv of the cotangent
    with the spatially flipped, in/out-swapped kernel (a transposed convolution).
    Why: that is the fast kernel, and it never builds the ``(B, H, W, k²·C_out)``
    patch cotangent (925 MB for dmformer_s's stem at batch 32) that the im2col input
    gradient writes and folds back. Strided convs keep the im2col input gradient.

``'auto'`` picks per backend (`resolve_impl`): im2col_tconv on CPU, XLA's conv on
GPU/TPU (where a conv *is* an implicit GEMM already).
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


def xla_conv(x: Array, kernel: Array, *, stride: int, padding: int) -> Array:
    """XLA's convolution (``nn.Conv``'s own computation)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def flat_matmul(x: Array, weight: Array) -> Array:
    """``x @ weight`` over the last axis: ``(..., K)`` @ ``(K, N)`` -> ``(..., N)``.

    The leading axes are merged into one first, so XLA sees a 2-D ``(M, K) @ (K, N)``
    and autodiff gives 2-D gradients (``g @ weightᵀ``, ``xᵀ @ g``). Why: on XLA's CPU
    backend the gradients of the same contraction written on ``(B, H, W, K)`` ran
    ~1.5× slower for dmformer_s's stage-0 MLP (batch 32, 56×56×64: forward+backward
    ~290 vs ~195 ms; docs/benchmarks.md). The merge is free for a row-major array.
    """
    flat = x.reshape(-1, x.shape[-1])
    return (flat @ weight).reshape(*x.shape[:-1], weight.shape[-1])


def pointwise_conv(x: Array, kernel: Array) -> Array:
    """1×1 stride-1 conv as ``x @ kernel[0, 0]``: ``(..., C_in)`` -> ``(..., C_out)``."""
    return flat_matmul(x, kernel[0, 0])


def im2col_patches(x: Array, k: int, stride: int, padding: int) -> Array:
    """``(B, H, W, C)`` -> ``(B, H', W', k²·C)``, ordered ``(i, j, c)`` like ``kernel.reshape``."""
    x_pad = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    batch, height, width, channels = x_pad.shape
    out_h = (height - k) // stride + 1
    out_w = (width - k) // stride + 1
    slices = [
        lax.slice(
            x_pad,
            (0, i, j, 0),
            (batch, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, channels),
            (1, stride, stride, 1),
        )
        for i in range(k)
        for j in range(k)
    ]
    return jnp.concatenate(slices, axis=-1)


def im2col_conv(x: Array, kernel: Array, *, stride: int, padding: int) -> Array:
    """The convolution as ``patches @ kernel.reshape(k²·C_in, C_out)``."""
    k = kernel.shape[0]
    patches = im2col_patches(x, k, stride, padding)
    return lax.dot_general(
        patches, kernel.reshape(-1, kernel.shape[-1]), (((3,), (0,)), ((), ()))
    )


# The kernel gradient ``patchesᵀ @ g`` builds the patch matrix a block of output rows at
# a time when the whole matrix would exceed PATCH_BYTES_AT_ONCE, each block up to
# PIXELS_PER_BLOCK output pixels. Measured on XLA:CPU (dmformer_s, batch 32, 2-core
# AVX-512 EPYC, 2026-11-28; docs/benchmarks.md): the stem's 3×3 conv 456 → 331 ms,
# its 7×7 conv 189 → 117 ms, its 2×2 conv 74 → 52 ms; the stage-2/3 downsampling convs
# (≤ 29 MB of patches) were the same or slower in blocks, so they stay one matmul.
PATCH_BYTES_AT_ONCE = 32 * 2**20
PIXELS_PER_BLOCK = 1792


def im2col_kernel_grad(x: Array, g: Array, kernel: Array, stride: int, padding: int) -> Array:
    """``dkernel`` (``kernel``'s shape and dtype) of ``im2col_conv``: ``patches(x)ᵀ @ g``.

    ``x`` ``(B, H, W, C_in)``, ``g`` ``(B, H', W', C_out)``. Large patch matrices are
    built and multiplied a block of rows at a time inside a ``lax.scan``, summing in
    float32, so the ``(B·H'·W', k²·C_in)`` matrix (925 MB for dmformer_s's stem at
    batch 32) never exists at once.
    """
    batch, out_h, out_w, c_out = g.shape
    k, c_in = kernel.shape[0], x.shape[-1]
    patch_bytes = batch * out_h * out_w * k * k * c_in * x.dtype.itemsize
    if patch_bytes <= PATCH_BYTES_AT_ONCE:
        _, vjp = jax.vjp(lambda kern: im2col_conv(x, kern, stride=stride, padding=padding), kernel)
        return vjp(g)[0]
    rows = rows_per_block(out_h, out_w, PIXELS_PER_BLOCK)
    x_pad = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    span_h = (rows - 1) * stride + k

    def block_sum(b: Array, h: Array) -> Array:
        x_rows = lax.dynamic_slice(x_pad, (b, h * stride, 0, 0), (1, span_h, x_pad.shape[2], c_in))
        g_rows = lax.dynamic_slice(g, (b, h, 0, 0), (1, rows, out_w, c_out)).reshape(rows * out_w, c_out)
        patches = im2col_patches(x_rows, k, stride, 0).reshape(rows * out_w, k * k * c_in)
        return jnp.matmul(patches.T, g_rows, preferred_element_type=jnp.float32)

    init = jnp.zeros((k * k * c_in, c_out), jnp.float32)
    acc = sum_over_row_blocks(block_sum, init, batch, out_h, rows)
    return acc.reshape(kernel.shape).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_im2col_grad(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    return xla_conv(x, kernel, stride=stride, padding=padding)


def _conv_im2col_grad_fwd(x, kernel, stride, padding):
    return xla_conv(x, kernel, stride=stride, padding=padding), (x, kernel)


def _conv_im2col_grad_bwd(stride, padding, residuals, g):
    x, kernel = residuals
    # The primal output of this vjp is unused and removed by XLA's dead-code pass.
    _, vjp = jax.vjp(lambda x: im2col_conv(x, kernel, stride=stride, padding=padding), x)
    return vjp(g)[0], im2col_kernel_grad(x, g, kernel, stride, padding)


_conv_im2col_grad.defvjp(_conv_im2col_grad_fwd, _conv_im2col_grad_bwd)


def transposed_conv_input_grad(g: Array, kernel: Array, *, padding: int) -> Array:
    """Input gradient of a stride-1 conv: ``(B, H', W', C_out)`` -> ``(B, H, W, C_in)``.

    ``dx[h, w] = Σ_{i,j} g[h + padding − i, w + padding − j] @ kernel[i, j].T``, i.e. a
    stride-1 conv of ``g`` padded by ``k − 1 − padding`` with ``kernel`` flipped in
    both spatial axes and its channel axes swapped. Needs ``padding <= k − 1``.
    """
    k = kernel.shape[0]
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    return xla_conv(g, flipped, stride=1, padding=k - 1 - padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_tconv_grad(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    return xla_conv(x, kernel, stride=stride, padding=padding)


def _conv_tconv_grad_bwd(stride, padding, residuals, g):
    x, kernel = residuals
    dx = transposed_conv_input_grad(g, kernel, padding=padding)
    # Only the kernel gradient of the im2col matmul: the patches of x, transposed, @ g.
    return dx, im2col_kernel_grad(x, g, kernel, stride, padding)


_conv_tconv_grad.defvjp(_conv_im2col_grad_fwd, _conv_tconv_grad_bwd)


def im2col_tconv_conv(x: Array, kernel: Array, *, stride: int, padding: int) -> Array:
    """`im2col_grad_conv`, but a stride-1 k×k conv's input gradient is a transposed conv."""
    if stride != 1 or kernel.shape[0] != kernel.shape[1] or padding > kernel.shape[0] - 1:
        return im2col_grad_conv(x, kernel, stride=stride, padding=padding)
    if kernel.shape[:2] == (1, 1) and padding == 0:
        return pointwise_conv(x, kernel)
    return _conv_tconv_grad(x, kernel, stride, padding)


def im2col_grad_conv(x: Array, kernel: Array, *, stride: int, padding: int) -> Array:
    """XLA's forward; gradients of the im2col matmul (a 1×1 stride-1 conv: one dot)."""
    if kernel.shape[:2] == (1, 1) and stride == 1 and padding == 0:
        return pointwise_conv(x, kernel)
    if kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"im2col needs a square kernel, got {kernel.shape[:2]}")
    return _conv_im2col_grad(x, kernel, stride, padding)


IMPLEMENTATIONS: dict[str, Callable[..., Array]] = {
    "xla": xla_conv,
    "im2col": im2col_grad_conv,
    "im2col_tconv": im2col_tconv_conv,
}

# Chosen from measurement (docs/benchmarks.md). GPU/TPU: XLA's conv until
# benchmarks/gpu_check.py says otherwise.
DEFAULT_IMPL_BY_BACKEND: dict[str, str] = {"cpu": "im2col_tconv", "gpu": "xla", "tpu": "xla"}


def available_impls() -> list[str]:
    """Names accepted by ``impl`` (besides ``'auto'``)."""
    return sorted(IMPLEMENTATIONS)


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """Turns ``'auto'`` into the default for ``backend`` (default: JAX's backend)."""
    return resolve(impl, IMPLEMENTATIONS, DEFAULT_IMPL_BY_BACKEND, "dense conv", backend)


def conv2d(x: Array, kernel: Array, *, stride: int = 1, padding: int = 0, impl: str = "auto") -> Array:
    """Dense conv. ``x`` ``(B, H, W, C_in)``, ``kernel`` ``(k, k, C_in, C_out)``.

    Returns ``(B, (H + 2·padding − k) // stride + 1, (W + …) // stride + 1, C_out)``.
    """
    if kernel.ndim != 4 or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"conv kernel must be (k, k, C_in={x.shape[-1]}, C_out), got {kernel.shape}")
    return IMPLEMENTATIONS[resolve_impl(impl)](x, kernel, stride=stride, padding=padding)
