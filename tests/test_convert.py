"""Flax <-> PyTorch state-dict conversion: layouts, round trips, and named errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmformer_jax
from dmformer_jax.checkpoint.convert import ConversionError, flax_to_torch_state_dict, torch_state_dict_to_flax


@pytest.fixture(scope="module")
def tiny():
    model = dmformer_jax.create_model("dmformer_tiny_test", num_classes=5)
    # Shapes only (compiling model.init is slow on CPU); distinct random values
    # everywhere so a wrong transpose cannot pass by symmetry.
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    leaves, treedef = jax.tree.flatten(variables)
    rng = np.random.RandomState(0)
    variables = jax.tree.unflatten(treedef, [rng.randn(*np.shape(l)).astype(np.float32) for l in leaves])
    return model, variables


def test_layouts(tiny):
    _, v = tiny
    sd = flax_to_torch_state_dict(v)
    b = v["params"]["backbone"]
    dw = np.asarray(b["stage_0_block_0"]["token_mixer"]["branch_2"]["kernel"])  # (7, 7, 1, C)
    got = sd["backbone.stage_0_block_0.token_mixer.branch_2.weight"]  # (C, 1, 7, 7)
    assert got.shape == (dw.shape[3], 1, 7, 7)
    assert got[3, 0, 1, 5] == dw[1, 5, 0, 3]
    conv = np.asarray(b["stem"]["conv1"]["kernel"])  # (7, 7, 3, O)
    got = sd["backbone.stem.conv1.weight"]
    assert got[4, 2, 6, 1] == conv[6, 1, 2, 4]
    dense = np.asarray(v["params"]["head"]["fc"]["kernel"])  # (in, out)
    assert sd["head.fc.weight"].shape == dense.T.shape and sd["head.fc.weight"][2, 7] == dense[7, 2]
    assert np.array_equal(sd["head.norm.weight"], np.asarray(v["params"]["head"]["norm"]["scale"]))
    stats = v["batch_stats"]["backbone"]
    assert np.array_equal(sd["backbone.stem.bn1.running_var"], np.asarray(stats["stem"]["bn1"]["var"]))
    assert np.array_equal(sd["backbone.stem.norm.weight"], np.asarray(b["stem"]["norm"]["scale"]))
    assert sd["backbone.stem.bn1.num_batches_tracked"].dtype == np.int64


def test_round_trip_is_exact(tiny):
    _, v = tiny
    back = torch_state_dict_to_flax(flax_to_torch_state_dict(v), like=v)
    flat_v = jax.tree_util.tree_leaves_with_path(v)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(back))
    assert len(flat_v) == len(flat_b)
    for path, leaf in flat_v:
        np.testing.assert_array_equal(np.asarray(flat_b[path]), np.asarray(leaf), err_msg=str(path))


def test_matches_the_torch_model_keys(tiny):
    import dmformer_jax.torch_model as torch_model_mod
    _, v = tiny
    tm = torch_model_mod.create_torch_model("dmformer_tiny_test", num_classes=5)
    sd = flax_to_torch_state_dict(v, like=tm.state_dict())
    assert set(sd) == set(tm.state_dict())
    # And back from a real torch state dict (tensors, not arrays).
    back = torch_state_dict_to_flax(tm.state_dict(), like=v)
    assert jax.tree.structure(back) == jax.tree.structure(jax.tree.map(np.asarray, v))


def test_errors_name_the_keys(tiny):
    _, v = tiny
    sd = flax_to_torch_state_dict(v)
    broken = dict(sd)
    del broken["head.fc.bias"]
    broken["head.fc.extra"] = np.zeros(3)
    broken["backbone.stem.conv1.weight"] = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ConversionError) as err:
        torch_state_dict_to_flax(broken, like=v)
    msg = str(err.value)
    assert "missing 1 key(s): head.fc.bias" in msg
    assert "unexpected 1 key(s): head.fc.extra" in msg
    assert "backbone.stem.conv1.weight: got (1, 2, 3, 4)" in msg
    other = dmformer_jax.create_model("dmformer_tiny_test", num_classes=7)
    other_v = jax.eval_shape(other.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ConversionError, match=r"head\.fc\.weight: got \(5, 32\), expected \(7, 32\)"):
        flax_to_torch_state_dict(v, like=flax_to_torch_state_dict(jax.tree.map(lambda s: np.empty(s.shape, np.float32), other_v)))


# ---------------------------------------------------------------- every leaf, by rule
# The layout rule, independent of the converter: a Flax HWIO kernel K and its PyTorch
# weight W compute the same convolution (NumPy sum over K's axes by their meaning vs
# torch's conv2d on W); a Flax (in, out) kernel and W the same x @ K = linear(x, W);
# every other leaf is copied. Key rule: the Flax module path joined by '.', and
# kernel/scale -> weight, mean/var -> running_mean/running_var, bias/gamma as is.

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "gamma": "gamma",
               "mean": "running_mean", "var": "running_var"}


def _conv_hwio_numpy(x, k):
    """One output position of a (grouped) conv: x (N, kh, kw, Cin), k (kh, kw, I, O) -> (N, O)."""
    groups = x.shape[-1] // k.shape[2]
    per_group = k.shape[3] // groups
    i = k.shape[2]
    out = np.empty((x.shape[0], k.shape[3]))
    for o in range(k.shape[3]):
        g = o // per_group
        out[:, o] = np.einsum("nhwc,hwc->n", x[..., g * i:(g + 1) * i], k[..., o])
    return out


def _same_function(flax_leaf, torch_leaf, name, rng):
    import torch
    import torch.nn.functional as F

    flax_leaf, torch_leaf = np.asarray(flax_leaf, np.float64), np.asarray(torch_leaf, np.float64)
    if name == "kernel" and flax_leaf.ndim == 4:
        kh, kw, i, o = flax_leaf.shape
        assert torch_leaf.shape == (o, i, kh, kw), name  # (O, I/groups, kh, kw)
        g = o if i == 1 else 1  # depth-wise (I = 1, one group per channel) or dense
        x = rng.normal(size=(3, kh, kw, i * g))
        want = _conv_hwio_numpy(x, flax_leaf)
        got = F.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(torch_leaf), groups=g)
        np.testing.assert_allclose(got.numpy()[:, :, 0, 0], want, rtol=1e-9, atol=1e-9)
    elif name == "kernel":
        x = rng.normal(size=(3, flax_leaf.shape[0]))
        got = F.linear(torch.from_numpy(x), torch.from_numpy(torch_leaf)).numpy()
        np.testing.assert_allclose(got, x @ flax_leaf, rtol=1e-9, atol=1e-9)
    else:
        np.testing.assert_array_equal(torch_leaf, flax_leaf)


def test_every_leaf_follows_the_layout_rule_both_ways(tiny):
    import dmformer_jax.torch_model as torch_model_mod

    _, v = tiny
    rng = np.random.default_rng(0)
    sd = flax_to_torch_state_dict(v)
    flat = jax.tree_util.tree_leaves_with_path(v)
    seen = set()
    for path, leaf in flat:
        keys = [k.key for k in path]
        key = ".".join(keys[1:-1]) + "." + _TORCH_LEAF[keys[-1]]
        assert key in sd, key
        seen.add(key)
        _same_function(leaf, sd[key], keys[-1], rng)
    assert set(sd) - seen == {k for k in sd if k.endswith(".num_batches_tracked")}
    assert len(seen) == len(flat) > 60

    # PyTorch -> Flax from a real torch model with random weights.
    import torch

    tm = torch_model_mod.create_torch_model("dmformer_tiny_test", num_classes=5)
    with torch.no_grad():
        for t in tm.state_dict().values():
            if t.dtype.is_floating_point:
                t.copy_(torch.randn(t.shape, dtype=t.dtype))
    tsd = {k: t.numpy() for k, t in tm.state_dict().items()}
    back = torch_state_dict_to_flax(tm.state_dict(), like=v)
    for path, leaf in jax.tree_util.tree_leaves_with_path(back):
        keys = [k.key for k in path]
        _same_function(leaf, tsd[".".join(keys[1:-1]) + "." + _TORCH_LEAF[keys[-1]]], keys[-1], rng)
