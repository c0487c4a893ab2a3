"""Depth-wise convolution implementations that share one parameter layout.

All take NHWC inputs ``x`` ``(B, H, W, C)`` and a ``flax.linen.Conv``-layout kernel
``(k, k, 1, C)`` and return ``(B, H', W', C)`` for a stride-1 dilated convolution
with symmetric zero padding ``padding`` (``H' = H + 2·padding − d·(k−1)``).

Implementations:
  - ``'xla'``: ``lax.conv_general_dilated(feature_group_count=C)``, what
    ``nn.Conv`` runs. Fast on GPU/TPU; slow on XLA's CPU backend.
  - ``'shift_add'``: the same arithmetic as a sum of k² shifted, per-channel scaled
    slices, which XLA fuses into one elementwise loop; gradients by autodiff.

``'auto'`` picks per backend (`resolve_impl`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

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


def shift_add_depthwise(x: Array, kernel: Array, *, dilation: int, padding: int) -> Array:
    """Depth-wise conv as ``Σ_{i,j} kernel[i, j, 0, :] · x_pad[:, i·d:, j·d:, :]``."""
    k_h, k_w = kernel.shape[0], kernel.shape[1]
    x_pad = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_h = x_pad.shape[1] - dilation * (k_h - 1)
    out_w = x_pad.shape[2] - dilation * (k_w - 1)
    out = None
    for i in range(k_h):
        for j in range(k_w):
            window = lax.dynamic_slice_in_dim(x_pad, i * dilation, out_h, axis=1)
            window = lax.dynamic_slice_in_dim(window, j * dilation, out_w, axis=2)
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


IMPLEMENTATIONS: dict[str, DepthwiseFn] = {
    "xla": xla_depthwise,
    "shift_add": shift_add_depthwise,
}

# Chosen from measurement (docs/benchmarks.md): XLA's grouped conv is 8–80× slower
# than a fused shift-and-add on the CPU backend; on GPU/TPU its own conv is used.
DEFAULT_IMPL_BY_BACKEND: dict[str, str] = {
    "cpu": "shift_add",
    "gpu": "xla",
    "tpu": "xla",
}


def available_impls() -> list[str]:
    """Names accepted by ``impl`` (besides ``'auto'``)."""
    return sorted(IMPLEMENTATIONS)


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """Turns ``'auto'`` into the default for ``backend`` (default: JAX's backend)."""
    if impl == "auto":
        backend = backend or jax.default_backend()
        return DEFAULT_IMPL_BY_BACKEND.get(backend, "xla")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown depth-wise implementation {impl!r}; choose one of "
            f"{['auto', *available_impls()]}"
        )
    return impl


def depthwise_conv2d(
    x: Array, kernel: Array, *, dilation: int = 1, padding: int = 0, impl: str = "auto"
) -> Array:
    """Stride-1 depth-wise conv. ``x`` ``(B, H, W, C)``, ``kernel`` ``(k, k, 1, C)``."""
    if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(
            f"depth-wise kernel must be (k, k, 1, C={x.shape[-1]}), got {kernel.shape}"
        )
    return IMPLEMENTATIONS[resolve_impl(impl)](x, kernel, dilation=dilation, padding=padding)
