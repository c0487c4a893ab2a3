"""The DMFormer family against an independent NumPy float64 implementation of the spec."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmformer_jax
from dmformer_jax.models import DMA, layers
from dmformer_jax.models.init import init_variables
from dmformer_jax.models.registry import VARIANTS

import numpy_reference as ref

TINY = "dmformer_tiny_test"


def randomize(tree, seed, scale=0.3):
    """Random values for every leaf, so no parameter can hide behind its init
    (layer scale 1e-5, zero biases, identity BN statistics). NumPy, not jax.random:
    eager jax.random compiles one kernel per shape, which costs seconds each."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * scale, x.dtype), tree)


def random_batch_stats(stats, seed):
    """Positive variances, non-zero means."""
    rng = np.random.default_rng(seed)

    def one(path, x):
        if path[-1].key == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, size=x.shape), jnp.float32)
        return jnp.asarray(rng.normal(size=x.shape) * 0.2, jnp.float32)
    return jax.tree_util.tree_map_with_path(one, stats)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def init_random(module, x, key=0):
    variables = jax.eval_shape(module.init, jax.random.key(key), x)
    params = randomize(variables["params"], key + 1)
    stats = random_batch_stats(variables["batch_stats"], key + 2)
    return {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("fusion", ["split", "sum"])
@pytest.mark.parametrize("inner_residual", [True, False])
@pytest.mark.parametrize("impl,conv_impl", [("xla", "xla"), ("shift_add", "im2col")])
def test_dma_matches_numpy_float64(fusion, inner_residual, impl, conv_impl):
    x = jax.random.normal(jax.random.key(3), (2, 12, 10, 8))
    module = DMA(fusion=fusion, inner_residual=inner_residual, depthwise_impl=impl, conv_impl=conv_impl)
    variables = init_random(module, x)
    out = jax.jit(module.apply)(variables, x)
    expected = ref.dma(x, variables["params"], variables["batch_stats"], fusion=fusion,
                       inner_residual=inner_residual)
    assert out.shape == x.shape
    assert rel_err(out, expected) <= 1e-5


def test_dma_knobs_change_the_shapes():
    x = jnp.ones((1, 8, 8, 8))
    module = DMA(expand_ratio=6, kernel_sizes=(3, 5), dilations=(1, 1), gate_reduction=2)
    params = module.init(jax.random.key(0), x)["params"]
    assert params["expand"]["kernel"].shape == (1, 1, 8, 48)
    assert params["branch_0"]["kernel"].shape == (3, 3, 1, 24)
    assert params["branch_1"]["kernel"].shape == (5, 5, 1, 24)
    assert "branch_2" not in params
    assert params["gate_fc1"]["kernel"].shape == (8, 4)


@pytest.mark.parametrize("bad, message", [
    (dict(kernel_sizes=(3, 5), dilations=(1,)), "one dilation per kernel size"),
    (dict(fusion="concat"), "fusion must be one of"),
    (dict(expand_ratio=2), "divisible by the 3 branches"),
])
def test_dma_rejects_inconsistent_knobs(bad, message):
    with pytest.raises(ValueError, match=message):
        DMA(**bad).init(jax.random.key(0), jnp.ones((1, 8, 8, 8)))


@pytest.mark.parametrize("impl,conv_impl", [("xla", "xla"), ("shift_add", "im2col")])
def test_whole_model_matches_numpy_float64(impl, conv_impl):
    model = dmformer_jax.create_model(TINY, num_classes=7, depthwise_impl=impl, conv_impl=conv_impl)
    images = jax.random.normal(jax.random.key(5), (2, 32, 32, 3))
    variables = init_random(model, images)
    logits, feats = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: (m(x), m.features(x))))(
        variables, images)
    expected, expected_feats = ref.dmformer(
        images, variables["params"], variables["batch_stats"], VARIANTS[TINY].depths)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert rel_err(logits, expected) <= 1e-5
    for i, name in enumerate(dmformer_jax.models.FEATURE_NAMES):
        assert rel_err(feats[name], expected_feats[i]) <= 1e-5


@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (5, 2), (7, 3), (3, 3)])
@pytest.mark.parametrize("impl", ["xla", "shift_add"])
def test_depthwise_padding_keeps_height_width(kernel_size, dilation, impl):
    x = jax.random.normal(jax.random.key(0), (1, 9, 14, 4))
    conv = layers.depthwise_conv(4, kernel_size, dilation=dilation, impl=impl)
    variables = conv.init(jax.random.key(1), x)
    out = conv.apply(variables, x)
    assert out.shape == x.shape
    assert variables["params"]["kernel"].shape == (kernel_size, kernel_size, 1, 4)
    expected = ref.depthwise(x, variables["params"]["kernel"], variables["params"]["bias"], dilation)
    assert rel_err(out, expected) <= 1e-5


def test_depthwise_conv_is_a_flax_grouped_conv():
    conv = layers.depthwise_conv(6, 5, dilation=2, impl="shift_add")
    assert isinstance(conv, nn.Conv) and conv.feature_group_count == 6
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
    variables = conv.init(jax.random.key(1), x)
    plain = nn.Conv(6, (5, 5), kernel_dilation=(2, 2), padding=((4, 4), (4, 4)), feature_group_count=6)
    # Same parameter tree as a plain grouped nn.Conv, and the same function of it.
    assert jax.tree.map(jnp.shape, plain.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(conv.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_batch_norm_updates_statistics_in_train_and_uses_them_in_eval():
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 8)) * 2.0 + 1.0
    module = DMA(depthwise_impl="xla")
    variables = init_random(module, x)
    out_train, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    old, new = variables["batch_stats"]["bn"], updates["batch_stats"]["bn"]

    # Recompute the pre-BN activations in NumPy to get the batch statistics.
    p = variables["params"]
    e = ref.conv2d(x, p["expand"]["kernel"], p["expand"]["bias"])
    groups = np.split(e, 3, axis=-1)
    f = np.concatenate([ref.depthwise(g, p[f"branch_{i}"]["kernel"], p[f"branch_{i}"]["bias"], d)
                        for i, (g, d) in enumerate(zip(groups, (1, 2, 3)))], axis=-1)
    _, mu, var = ref.batch_norm_train(f, p["bn"])
    np.testing.assert_allclose(new["mean"], 0.9 * np.asarray(old["mean"]) + 0.1 * mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * np.asarray(old["var"]) + 0.1 * var, rtol=1e-4, atol=1e-5)

    # Eval mode normalises with the stored statistics, whatever the batch.
    updated = {"params": p, "batch_stats": updates["batch_stats"]}
    out_eval = module.apply(updated, x)
    expected_eval = ref.dma(x, p, updates["batch_stats"])
    assert rel_err(out_eval, expected_eval) <= 1e-5
    assert rel_err(out_train, expected_eval) > 1e-3  # train used batch statistics instead


def test_drop_path_identity_at_eval_and_drops_whole_samples_in_train():
    x = jnp.ones((256, 4, 4, 3))
    drop = layers.DropPath(0.5)
    assert np.array_equal(drop.apply({}, x, deterministic=True), x)
    y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"drop_path": jax.random.key(0)}))
    per_sample = y.reshape(256, -1)
    # Each sample is all zeros or all 1/keep: whole samples are dropped.
    assert np.all((per_sample == 0.0).all(1) | (per_sample == 2.0).all(1))
    dropped = (per_sample == 0.0).all(1).sum()
    assert 90 <= dropped <= 166  # Binomial(256, 0.5) within ~4.6 sigma


def test_drop_path_in_model_depends_on_key_and_is_off_at_eval():
    model = dmformer_jax.create_model(TINY, num_classes=5, drop_path_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = init_random(model, x)
    run = jax.jit(lambda k: model.apply(variables, x, train=True, rngs={"drop_path": jax.random.key(k)},
                                        mutable=["batch_stats"])[0])
    assert np.array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))
    no_drop = dmformer_jax.create_model(TINY, num_classes=5, drop_path_rate=0.0)
    np.testing.assert_array_equal(jax.jit(model.apply)(variables, x), jax.jit(no_drop.apply)(variables, x))


@pytest.mark.slow  # > 30 s on 2 cores (compiles); CI runs it
def test_gradients_are_finite_and_match_finite_differences():
    model = dmformer_jax.create_model(TINY, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = init_random(model, x)
    labels = jnp.array([0, 2])

    def loss(params):
        logits = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    loss = jax.jit(loss)
    params = variables["params"]
    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # Directional derivatives along random directions, central differences.
    for seed in range(3):
        direction = randomize(params, 100 + seed, scale=1.0)
        norm = jnp.sqrt(sum(jnp.sum(d * d) for d in jax.tree.leaves(direction)))
        direction = jax.tree.map(lambda d: d / norm, direction)
        eps = 1e-2
        plus = loss(jax.tree.map(lambda p, d: p + eps * d, params, direction))
        minus = loss(jax.tree.map(lambda p, d: p - eps * d, params, direction))
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        assert abs(float(numeric) - float(analytic)) <= 2e-2 * abs(float(analytic)) + 1e-4


def test_fixed_key_gives_identical_outputs():
    model = dmformer_jax.create_model(TINY, num_classes=4)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    a = init_variables(model, jax.random.key(7), x.shape)
    b = init_variables(model, jax.random.key(7), x.shape)
    c = init_variables(model, jax.random.key(8), x.shape)
    assert all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(c["params"])))
    apply = jax.jit(model.apply)  # one wrapper: a second jax.jit(model.apply) would compile again
    np.testing.assert_array_equal(apply(a, x), apply(b, x))


@pytest.mark.parametrize("shape", [(1, 224, 224), (2, 256, 256), (1, 288, 288), (2, 224, 288), (1, 96, 160)])
def test_any_size_divisible_by_32_and_features_have_strides_4_to_32(shape):
    batch, height, width = shape
    model = dmformer_jax.create_model(TINY, num_classes=6)
    x = jnp.ones((batch, height, width, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (batch, 6)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), variables, x)
    for name, stride, width_ in zip(dmformer_jax.models.FEATURE_NAMES, (4, 8, 16, 32), VARIANTS[TINY].widths):
        assert feats[name].shape == (batch, height // stride, width // stride, width_)


def test_real_forward_at_non_square_batch_one():
    model = dmformer_jax.create_model(TINY, num_classes=6)
    x = jax.random.normal(jax.random.key(1), (1, 64, 96, 3))
    variables = init_random(model, x)
    expected, _ = ref.dmformer(x, variables["params"], variables["batch_stats"], VARIANTS[TINY].depths)
    assert rel_err(jax.jit(model.apply)(variables, x), expected) <= 1e-5


def test_size_not_divisible_by_32_is_a_clear_error():
    model = dmformer_jax.create_model(TINY)
    with pytest.raises(ValueError, match="divisible by 32"):
        model.init(jax.random.key(0), jnp.ones((1, 100, 96, 3)))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = dmformer_jax.create_model(TINY, num_classes=5, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = init_random(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    logits = jax.jit(model.apply)(variables, x)
    assert logits.dtype == jnp.float32
    f32 = jax.jit(dmformer_jax.create_model(TINY, num_classes=5).apply)(variables, x)
    assert rel_err(logits, f32) < 5e-2  # bf16 has 8 mantissa bits


def test_registry_lists_variants_and_rejects_unknown_names():
    assert dmformer_jax.list_models() == ["dmformer_l", "dmformer_s", "dmformer_t", "dmformer_tiny_test"]
    with pytest.raises(ValueError, match=r"unknown model 'dmformer_xl'; valid models: dmformer_l, dmformer_s"):
        dmformer_jax.create_model("dmformer_xl")
    with pytest.raises(ValueError, match="unknown DMFormer option"):
        dmformer_jax.create_model("dmformer_t", drop_rate=0.1)


@pytest.mark.parametrize("name, expected_params", [
    ("dmformer_t", 4.7e6), ("dmformer_s", 24.4e6), ("dmformer_l", 45.1e6)])
def test_variant_sizes_match_the_spec_within_3_percent(name, expected_params):
    model = dmformer_jax.create_model(name)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 224, 224, 3)))
    count = sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["params"]))
    assert abs(count - expected_params) / expected_params < 0.03
    # Variant table from the spec: depths and widths.
    stages = {k for k in shapes["params"]["backbone"] if k.startswith("stage_")}
    assert len(stages) == sum(VARIANTS[name].depths)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_stem_width_is_derived_from_the_widths_in_use(name):
    def stem_width(**kw):
        model = dmformer_jax.create_model(name, **kw)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3)))
        return shapes["params"]["backbone"]["stem"]["conv1"]["kernel"].shape[-1]

    # The spec: 64 channels, or the first stage width when that is smaller.
    assert stem_width() == {"dmformer_tiny_test": 8, "dmformer_t": 32, "dmformer_s": 64, "dmformer_l": 64}[name]
    assert stem_width(widths=(16, 32, 48, 64)) == 16  # an override leaves no stale stem width
    assert stem_width(widths=(96, 192, 384, 768)) == 64
    assert stem_width(stem_hidden_width=24) == 24
