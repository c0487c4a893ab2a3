"""Freshly initialised models (not randomised ones) against the spec (issue 15).

Expected values are written by hand from ``docs/architecture.md``: layer-scale init
1e-5 (S) / 1e-6 (L); drop path 0.1 (S) / 0.3 (L) ramped linearly from 0 over all
blocks; kernels truncated normal with standard deviation 0.02; biases zero. Init runs
with the depths cut to one block per stage (widths, layer scale and initialisers are
the variant's): the values per parameter do not depend on depth, and a full-depth
init takes 15-30 s to compile on CPU. The drop-path ramp is read from the full-depth
models by tracing only (``jax.eval_shape``).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmformer_jax
from dmformer_jax.models import layers
from dmformer_jax.models.init import init_variables

SPEC = {  # name: (layer-scale init, drop-path rate, depths)
    "dmformer_s": (1e-5, 0.1, (2, 2, 8, 2)),
    "dmformer_l": (1e-6, 0.3, (3, 3, 18, 3)),
}


@pytest.fixture(scope="module", params=sorted(SPEC))
def fresh(request):
    name = request.param
    model = dmformer_jax.create_model(name, num_classes=10, depths=(1, 1, 1, 1))
    variables = init_variables(model, jax.random.key(0), (1, 32, 32, 3))
    flat = {
        "/".join(str(k.key) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
    }
    return name, flat


def _leaves(flat, leaf_name, collection="params"):
    return {p: v for p, v in flat.items() if p.startswith(collection + "/") and p.endswith("/" + leaf_name)}


def test_layer_scale_gamma_is_the_variants_init(fresh):
    name, flat = fresh
    gammas = _leaves(flat, "gamma")
    assert len(gammas) == 2 * 4  # two per block, one block per stage here
    for path, g in gammas.items():
        np.testing.assert_array_equal(g, np.full(g.shape, SPEC[name][0], np.float32), err_msg=path)


def test_biases_start_at_zero_and_norm_scales_at_one(fresh):
    _, flat = fresh
    biases = _leaves(flat, "bias")
    assert len(biases) > 20
    for path, b in biases.items():
        assert not b.any(), path
    for path, s in _leaves(flat, "scale").items():
        np.testing.assert_array_equal(s, np.ones_like(s), err_msg=path)
    for path, m in _leaves(flat, "mean", "batch_stats").items():
        assert not m.any(), path
    for path, v in _leaves(flat, "var", "batch_stats").items():
        np.testing.assert_array_equal(v, np.ones_like(v), err_msg=path)


def test_kernels_have_std_0_02(fresh):
    _, flat = fresh
    kernels = _leaves(flat, "kernel")
    assert len(kernels) > 20
    pooled = np.concatenate([k.ravel() for k in kernels.values()]).astype(np.float64)
    n = pooled.size
    assert n > 10**6
    # Sampling error of a std estimate is ~ std / sqrt(2 n); allow 5 of those (+ kurtosis slack).
    assert abs(pooled.std() - 0.02) < 5 * 0.02 / np.sqrt(2 * n) + 1e-5, pooled.std()
    assert abs(pooled.mean()) < 5 * 0.02 / np.sqrt(n)
    assert np.abs(pooled).max() < 3 * 0.02  # truncated: no outliers
    for path, k in kernels.items():
        m = k.size
        if m < 1000:
            continue
        assert abs(k.std() - 0.02) < 6 * 0.02 / np.sqrt(2 * m), (path, k.std())
        assert abs(k.mean()) < 6 * 0.02 / np.sqrt(m), (path, k.mean())


def _drop_path_rates(name: str) -> list[float]:
    """(block order) the ``rate`` of every `DropPath` the full-depth model calls."""
    model = dmformer_jax.create_model(name, num_classes=10)
    rates: dict[tuple[int, int], float] = {}

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.DropPath) and context.method_name == "__call__":
            block = context.module.scope.path[-2]  # (..., 'backbone', 'stage_i_block_j', 'drop_path')
            stage, index = map(int, re.fullmatch(r"stage_(\d+)_block_(\d+)", block).groups())
            rates.setdefault((stage, index), float(context.module.rate))
        return next_fun(*args, **kwargs)

    x = jnp.zeros((1, 32, 32, 3))
    with nn.intercept_methods(interceptor):
        jax.eval_shape(
            lambda: model.init({"params": jax.random.key(0), "drop_path": jax.random.key(1)}, x, train=True)
        )
    return [rates[k] for k in sorted(rates)]


@pytest.mark.parametrize("name", sorted(SPEC))
def test_drop_path_ramps_linearly_from_zero_over_all_blocks(name):
    _, rate, depths = SPEC[name]
    got = _drop_path_rates(name)
    n = sum(depths)
    assert len(got) == n
    expected = [rate * i / (n - 1) for i in range(n)]  # 0, ..., rate across stages
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
