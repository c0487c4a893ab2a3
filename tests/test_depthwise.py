"""Every depth-wise implementation against a NumPy float64 reference: values and
gradients (input and kernel), k = 3, 5, 7 × dilation 1, 2, 3, float32 and bfloat16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmformer_jax.models import depthwise

IMPLS = sorted(depthwise.IMPLEMENTATIONS)
CASES = [(k, d) for k in (3, 5, 7) for d in (1, 2, 3)]


def reference(x, kernel, ct, dilation, padding):
    """float64 out, d(Σ out·ct)/dx, d(Σ out·ct)/dkernel by explicit per-tap loops."""
    x, kernel, ct = (np.asarray(a, np.float64) for a in (x, kernel, ct))
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    oh = xp.shape[1] - dilation * (k - 1)
    ow = xp.shape[2] - dilation * (k - 1)
    out = np.zeros(x.shape[:1] + (oh, ow) + x.shape[3:])
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for i in range(k):
        for j in range(k):
            sl = (slice(None), slice(i * dilation, i * dilation + oh), slice(j * dilation, j * dilation + ow))
            out += xp[sl] * kernel[i, j, 0]
            dxp[sl] += ct * kernel[i, j, 0]
            dk[i, j, 0] = np.sum(xp[sl] * ct, axis=(0, 1, 2))
    h, w = x.shape[1], x.shape[2]
    return out, dxp[:, padding:padding + h, padding:padding + w], dk


@functools.lru_cache(maxsize=None)
def _jitted(impl, dilation, padding):
    def loss(x, kernel, ct):
        y = depthwise.depthwise_conv2d(x, kernel, dilation=dilation, padding=padding, impl=impl)
        return jnp.sum(y.astype(jnp.float32) * ct), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def _inputs(k, dtype, shape=(2, 11, 9, 6), seed=0):
    rng = np.random.RandomState(seed + k)
    x = rng.randn(*shape).astype(np.float32)
    kernel = rng.randn(k, k, 1, shape[-1]).astype(np.float32)
    # Round to the test dtype first so the reference sees exactly the same inputs.
    x = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32))
    kernel = np.asarray(jnp.asarray(kernel, dtype).astype(jnp.float32))
    return x, kernel


def _check(impl, k, dilation, padding, dtype, rtol, rtol_dkernel=None, shape=(2, 11, 9, 6)):
    x, kernel = _inputs(k, dtype, shape=shape)
    oh = x.shape[1] + 2 * padding - dilation * (k - 1)
    ow = x.shape[2] + 2 * padding - dilation * (k - 1)
    ct = np.random.RandomState(1).randn(x.shape[0], oh, ow, x.shape[3]).astype(np.float32)
    (_, y), (dx, dk) = _jitted(impl, dilation, padding)(
        jnp.asarray(x, dtype), jnp.asarray(kernel, dtype), jnp.asarray(ct)
    )
    assert y.dtype == dtype and dx.dtype == dtype and dk.dtype == dtype
    want_y, want_dx, want_dk = reference(x, kernel, ct, dilation, padding)
    for name, got, want in (("out", y, want_y), ("dx", dx, want_dx), ("dkernel", dk, want_dk)):
        got = np.asarray(got, np.float64)
        assert got.shape == want.shape, name
        scale = np.max(np.abs(want))
        err = np.max(np.abs(got - want)) / scale
        tol = rtol_dkernel if (name == "dkernel" and rtol_dkernel is not None) else rtol
        assert err <= tol, f"{impl} k={k} d={dilation} {dtype.__name__} {name}: rel err {err:.2e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,dilation", CASES)
def test_float32_matches_float64_reference(impl, k, dilation):
    _check(impl, k, dilation, dilation * (k - 1) // 2, jnp.float32, rtol=1e-5)


# bfloat16 keeps 8 significant bits (unit roundoff 2^-9 ≈ 2e-3). Inputs are exactly
# representable (rounded before the reference sees them), so the error is the
# rounding of the result: every implementation sums the k² taps and the kernel
# gradient's B·H'·W' products in float32 and rounds once to bf16. 3e-2 of the max
# |reference| covers that while a wrong tap, flip or offset gives errors of order 1.
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,dilation", CASES)
def test_bfloat16_matches_float64_reference(impl, k, dilation):
    _check(impl, k, dilation, dilation * (k - 1) // 2, jnp.bfloat16, rtol=3e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_kernel_gradient_accumulates_in_float32(impl):
    """Over N = 8·28·28 positions a bf16 accumulation loses several percent (autodiff of
    shift_add before it summed in float32: 16% on a 16×56×56 map); a float32 one stays
    at the final rounding (2^-9 ≈ 2e-3)."""
    k, dilation = 7, 3
    x, kernel = _inputs(k, jnp.bfloat16, shape=(8, 28, 28, 8))
    ct = np.random.RandomState(1).randn(*x.shape).astype(np.float32)
    ct = np.asarray(jnp.asarray(ct, jnp.bfloat16).astype(jnp.float32))
    loss = lambda kern: jnp.sum(  # noqa: E731
        depthwise.depthwise_conv2d(jnp.asarray(x, jnp.bfloat16), kern, dilation=dilation,
                                   padding=9, impl=impl).astype(jnp.float32) * ct)
    dk = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(kernel, jnp.bfloat16)), np.float64)
    want = reference(x, kernel, ct, dilation, 9)[2]
    err = np.max(np.abs(dk - want)) / np.max(np.abs(want))
    assert err <= 5e-3, f"{impl}: bf16 kernel gradient rel err {err:.2e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padding", [0, 1, 5])
def test_non_same_padding(impl, padding):
    """Shrinking (padding 0) and growing (padding 5 > d·(k−1)/2) outputs, gradients too."""
    _check(impl, 3, 2, padding, jnp.float32, rtol=1e-5)


def test_auto_resolves_per_backend_and_rejects_unknown():
    assert depthwise.resolve_impl("auto", "cpu") == depthwise.DEFAULT_IMPL_BY_BACKEND["cpu"]
    assert depthwise.resolve_impl("auto", "gpu") == depthwise.DEFAULT_IMPL_BY_BACKEND["gpu"]
    assert set(depthwise.DEFAULT_IMPL_BY_BACKEND.values()) <= set(depthwise.IMPLEMENTATIONS)
    with pytest.raises(ValueError, match="unknown depth-wise implementation 'nope'"):
        depthwise.resolve_impl("nope")
    with pytest.raises(ValueError, match=r"must be \(k, k, 1, C=4\)"):
        depthwise.depthwise_conv2d(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 4, 4)))


# (shape, rows per scan step): a whole image per step (the default shape's 11×9), two
# 6-row blocks per image, and wide rows one at a time.
ROW_BLOCKS = [((2, 11, 9, 6), 11), ((2, 12, 10, 4), 6), ((2, 5, 30, 3), 1)]


@pytest.mark.parametrize("shape,rows", ROW_BLOCKS)
def test_kernel_gradient_row_blocks(shape, rows):
    """shift_add_vjp's kernel gradient scans blocks of output rows; every block size
    `_rows_per_step` picks (several blocks per image included) matches float64."""
    assert depthwise._rows_per_step(shape[1], shape[2]) == rows
    _check("shift_add_vjp", 5, 1, 2, jnp.float32, rtol=1e-5, shape=shape)
