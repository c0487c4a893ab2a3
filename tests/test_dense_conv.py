"""Every dense-conv implementation against a NumPy float64 reference: values and both
gradients, for the shapes DMFormer uses (stem 7×7 s2 / 3×3 / 2×2 s2, downsampling
3×3 s2, 1×1), float32 and bfloat16; and the layer keeps ``nn.Conv``'s parameters."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmformer_jax.models import dense_conv, layers

IMPLS = sorted(dense_conv.IMPLEMENTATIONS)
# (k, stride, padding): stem conv1, stem conv2, stem conv3, downsampling, 1×1, odd sizes.
CASES = [(7, 2, 3), (3, 1, 1), (2, 2, 0), (3, 2, 1), (1, 1, 0), (3, 2, 0)]


def reference(x, kernel, ct, stride, padding):
    """float64 out, d(Σ out·ct)/dx and d(Σ out·ct)/dkernel by explicit per-tap loops."""
    x, kernel, ct = (np.asarray(a, np.float64) for a in (x, kernel, ct))
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    oh, ow = ct.shape[1], ct.shape[2]
    out = np.zeros(ct.shape)
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for i in range(k):
        for j in range(k):
            sl = (slice(None), slice(i, i + stride * (oh - 1) + 1, stride), slice(j, j + stride * (ow - 1) + 1, stride))
            out += xp[sl] @ kernel[i, j]
            dxp[sl] += ct @ kernel[i, j].T
            dk[i, j] = np.einsum("bhwc,bhwd->cd", xp[sl], ct)
    h, w = x.shape[1], x.shape[2]
    return out, dxp[:, padding:padding + h, padding:padding + w], dk


@functools.lru_cache(maxsize=None)
def _jitted(impl, stride, padding):
    def loss(x, kernel, ct):
        y = dense_conv.conv2d(x, kernel, stride=stride, padding=padding, impl=impl)
        return jnp.sum(y.astype(jnp.float32) * ct), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def _check(impl, k, stride, padding, dtype, rtol, shape=(2, 13, 11, 5), c_out=7, jitted=None):
    rng = np.random.RandomState(k * 10 + stride)
    # Round to the test dtype first so the reference sees exactly the same inputs.
    x = np.asarray(jnp.asarray(rng.randn(*shape), dtype).astype(jnp.float32))
    kernel = np.asarray(jnp.asarray(rng.randn(k, k, shape[-1], c_out), dtype).astype(jnp.float32))
    oh = (shape[1] + 2 * padding - k) // stride + 1
    ow = (shape[2] + 2 * padding - k) // stride + 1
    ct = rng.randn(shape[0], oh, ow, c_out).astype(np.float32)
    (_, y), (dx, dk) = (jitted or _jitted(impl, stride, padding))(
        jnp.asarray(x, dtype), jnp.asarray(kernel, dtype), jnp.asarray(ct)
    )
    assert y.dtype == dtype and dx.dtype == dtype and dk.dtype == dtype
    want = reference(x, kernel, ct, stride, padding)
    for name, got, ref in zip(("out", "dx", "dkernel"), (y, dx, dk), want):
        got = np.asarray(got, np.float64)
        assert got.shape == ref.shape, name
        err = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
        assert err <= rtol, f"{impl} k={k} s={stride} p={padding} {dtype.__name__} {name}: rel err {err:.2e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,stride,padding", CASES)
def test_float32_matches_float64_reference(impl, k, stride, padding):
    _check(impl, k, stride, padding, jnp.float32, rtol=1e-5)


# bfloat16 (unit roundoff 2^-9): sums of up to k²·C_in = 245 rounded products and a
# final rounding stay well inside 3e-2 of the output scale, while a wrong tap,
# stride or offset gives errors of order 1.
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,stride,padding", CASES)
def test_bfloat16_matches_float64_reference(impl, k, stride, padding):
    _check(impl, k, stride, padding, jnp.bfloat16, rtol=3e-2)


@pytest.mark.parametrize("impl", ["im2col", "im2col_tconv"])
@pytest.mark.parametrize("k,stride,padding", CASES)
@pytest.mark.parametrize("pixels_per_block", [1, 11, 20])
def test_kernel_gradient_in_row_blocks_matches_float64(monkeypatch, impl, k, stride, padding, pixels_per_block):
    """The kernel gradient built a block of output rows at a time (what large convs such
    as the stem get): one row, one whole row of an image's width 11 (out widths 4–11),
    and several rows per block, each against the float64 reference."""
    monkeypatch.setattr(dense_conv, "PATCH_BYTES_AT_ONCE", 0)
    monkeypatch.setattr(dense_conv, "PIXELS_PER_BLOCK", pixels_per_block)
    jitted = _jitted.__wrapped__(impl, stride, padding)  # a fresh trace, with the patch
    _check(impl, k, stride, padding, jnp.float32, rtol=1e-5, shape=(2, 12, 11, 5), jitted=jitted)


def test_conv_layer_keeps_nn_conv_parameters_and_values():
    """Same parameter tree as ``nn.Conv``; with those parameters, the same outputs."""
    x = jnp.asarray(np.random.RandomState(0).randn(2, 12, 12, 5), jnp.float32)
    ref = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    ref_vars = ref.init(jax.random.key(0), x)
    for impl in IMPLS:
        layer = layers.conv(8, 3, stride=2, padding=1, impl=impl)
        shapes = jax.tree.map(jnp.shape, layer.init(jax.random.key(0), x))
        assert shapes == jax.tree.map(jnp.shape, ref_vars)
        np.testing.assert_allclose(layer.apply(ref_vars, x), ref.apply(ref_vars, x), rtol=1e-5, atol=1e-5)


def test_auto_resolves_per_backend_and_rejects_unknown():
    assert dense_conv.resolve_impl("auto", "cpu") == dense_conv.DEFAULT_IMPL_BY_BACKEND["cpu"]
    assert dense_conv.resolve_impl("auto", "gpu") == dense_conv.DEFAULT_IMPL_BY_BACKEND["gpu"]
    assert set(dense_conv.DEFAULT_IMPL_BY_BACKEND.values()) <= set(dense_conv.IMPLEMENTATIONS)
    with pytest.raises(ValueError, match="unknown dense conv implementation 'nope'"):
        dense_conv.resolve_impl("nope")
    with pytest.raises(ValueError, match=r"must be \(k, k, C_in=4, C_out\)"):
        dense_conv.conv2d(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 2, 4)))


def _stem_train_reference(x, p):
    """float64 stem in train mode (batch-statistics BatchNorm), from numpy_reference."""
    import numpy_reference as ref

    y = ref.conv2d(x, p["conv1"]["kernel"], stride=2, padding=3)
    y = ref.relu(ref.batch_norm_train(y, p["bn1"])[0])
    y = ref.conv2d(y, p["conv2"]["kernel"], padding=1)
    y = ref.relu(ref.batch_norm_train(y, p["bn2"])[0])
    y = ref.conv2d(y, p["conv3"]["kernel"], p["conv3"]["bias"], stride=2)
    return ref.layer_norm(y, p["norm"])


# The CPU default only: each conv impl is checked alone above; this is the composition.
@pytest.mark.parametrize("impl", [dense_conv.DEFAULT_IMPL_BY_BACKEND["cpu"]])
def test_stem_output_and_parameter_gradients_match_float64(impl):
    """The whole stem (7×7 s2, 3×3, 2×2 s2 with BN/ReLU/LN) at an odd size (38×30 ->
    19×15 -> 9×7): output, and the gradient of Σ out·ct along random directions in each
    conv kernel and the bias, against float64 central differences of the NumPy stem.
    The image gets no gradient (as in training)."""
    from dmformer_jax.models.backbone import Stem

    rng = np.random.RandomState(3)
    x = rng.randn(2, 38, 30, 3).astype(np.float32)
    stem = Stem(width=6, hidden_width=5, conv_impl=impl)
    variables = stem.init(jax.random.key(0), jnp.asarray(x), train=True)
    params = jax.tree.map(lambda a: (rng.randn(*a.shape) * 0.5).astype(np.float32), variables["params"])
    params["bn1"]["scale"] += 1.0
    params["bn2"]["scale"] += 1.0
    ct = rng.randn(2, 9, 7, 6)

    def loss(p):
        y, _ = stem.apply({"params": p, "batch_stats": variables["batch_stats"]}, jnp.asarray(x),
                          train=True, mutable=["batch_stats"])
        return jnp.sum(y * jnp.asarray(ct, jnp.float32)), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    want = _stem_train_reference(x, params)
    assert y.shape == want.shape == ct.shape
    np.testing.assert_allclose(np.asarray(y, np.float64), want, atol=2e-5 * np.abs(want).max())
    ref_loss = lambda p: float(np.sum(_stem_train_reference(x, p) * ct))  # noqa: E731
    eps = 1e-5
    for layer, name in (("conv1", "kernel"), ("conv2", "kernel"), ("conv3", "kernel"), ("conv3", "bias")):
        direction = rng.randn(*params[layer][name].shape)
        shifted = []
        for sign in (1, -1):
            p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
            p[layer][name] = p[layer][name] + sign * eps * direction
            shifted.append(ref_loss(p))
        numeric = (shifted[0] - shifted[1]) / (2 * eps)
        analytic = float(np.sum(np.asarray(grads[layer][name], np.float64) * direction))
        assert abs(analytic - numeric) <= 1e-4 * (abs(numeric) + 1.0), (layer, name, analytic, numeric)


@pytest.mark.parametrize("impl", IMPLS)
def test_dense_layer_keeps_nn_dense_parameters_and_matches_float64(impl):
    """`layers.Dense` on ``(B, H, W, C)``: ``nn.Dense``'s parameter tree, and output and
    gradients (input, kernel, bias) equal to a float64 ``x @ W + b``, whichever impl."""
    rng = np.random.RandomState(3)
    x = rng.randn(2, 5, 3, 6).astype(np.float32)
    ct = rng.randn(2, 5, 3, 4).astype(np.float32)
    layer = layers.dense(4, impl=impl)
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    ref_vars = nn.Dense(4).init(jax.random.key(0), jnp.asarray(x))
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, ref_vars)
    params = {"kernel": rng.randn(6, 4).astype(np.float32), "bias": rng.randn(4).astype(np.float32)}

    def loss(p, x):
        y = layer.apply({"params": p}, x)
        return jnp.sum(y * ct), y

    (_, y), (dp, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, jnp.asarray(x))
    x64, w64, ct64 = (np.asarray(a, np.float64) for a in (x, params["kernel"], ct))
    want = {
        "out": x64 @ w64 + params["bias"],
        "dx": ct64 @ w64.T,
        "dkernel": np.einsum("bhwc,bhwd->cd", x64, ct64),
        "dbias": ct64.sum((0, 1, 2)),
    }
    got = {"out": y, "dx": dx, "dkernel": dp["kernel"], "dbias": dp["bias"]}
    for name, ref in want.items():
        np.testing.assert_allclose(np.asarray(got[name], np.float64), ref, rtol=1e-5, atol=1e-5, err_msg=name)


def _dot_operand_ranks(fn, *args) -> set[int]:
    """Ranks of the left operands of every ``dot_general`` in ``fn``'s jaxpr (nested too)."""
    ranks = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                ranks.add(eqn.invars[0].aval.ndim)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return ranks


@pytest.mark.parametrize("impl,flat", [("im2col_tconv", True), ("im2col", True), ("xla", False)])
def test_block_matmuls_are_2d_under_the_cpu_impls(impl, flat):
    """The CPU conv impls reach the MLP and the DMA's 1×1 convs: their matmuls (forward
    and gradients) see 2-D ``(B·H·W, C)`` operands, the layout measured ~1.5× faster on
    XLA:CPU (docs/benchmarks.md); ``'xla'`` keeps ``nn.Dense`` / ``nn.Conv``."""
    from dmformer_jax.models.backbone import Block

    block = Block(mlp_ratio=2.0, dma={"conv_impl": impl, "depthwise_impl": "shift_add"})
    x = jnp.asarray(np.random.RandomState(0).randn(2, 6, 6, 6), jnp.float32)
    variables = block.init(jax.random.key(0), x)

    def loss(params, x):
        return jnp.sum(block.apply({**variables, "params": params}, x) ** 2)

    ranks = _dot_operand_ranks(jax.grad(loss, argnums=(0, 1)), variables["params"], x)
    if flat:
        assert ranks == {2}, ranks  # the gate's dense layers are 2-D already
    else:
        assert 4 in ranks, ranks


def test_micro_benchmark_fwd_bwd_timer_computes_the_forward_too():
    """`bench.jax_fwd_and_fwd_bwd`'s "fwd+bwd" must run the forward: a conv's gradients
    do not need its output, so unless the output is returned XLA drops it and the
    timer measures the backward alone (PyTorch's timer always runs the forward)."""
    from dmformer_jax import bench

    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(1, 6, 6, 3), jnp.float32)
    w = jnp.asarray(rng.randn(3, 3, 3, 4), jnp.float32)
    ct = jnp.asarray(rng.randn(1, 6, 6, 4), jnp.float32)
    fn = functools.partial(dense_conv.conv2d, stride=1, padding=1, impl="xla")
    _, fwd_bwd = bench.jax_fwd_and_fwd_bwd(fn, x, w, ct)
    y, (dx, dw) = fwd_bwd()
    want_y, want_dx, want_dw = reference(x, w, ct, 1, 1)
    for got, want in ((y, want_y), (dx, want_dx), (dw, want_dw)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-4)
