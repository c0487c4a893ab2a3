"""dmformer_jax.load / export / features / PyTorch interop on a checkpoint saved by
the trainer's own helpers on 8 fake devices (tests/research_fixture.py).

- load on 1 device (subprocess) returns the EMA parameters and BatchNorm statistics
  bit-exactly, on that device, and never the optimizer state;
- exports (Orbax folder, safetensors) load back bit-exactly with their metadata, and
  never overwrite an existing path;
- logits of the PyTorch re-implementation built from the JAX weights (and of the JAX
  model built from PyTorch weights) agree within 1e-4;
- a safetensors export loads into DMFormerTorch with load_state_dict(strict=True).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import dmformer_jax
from dmformer_jax.errors import CheckpointError

sys.path.insert(0, os.path.dirname(__file__))
import research_fixture  # noqa: E402
from subprocess_runs import xla_flags  # noqa: E402  (tests/ is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return research_fixture.cached_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(pretrained):
    workdir, _ = pretrained
    return dmformer_jax.load(workdir)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def logits(loaded, images):
    model, variables = loaded
    return np.asarray(_apply(model, variables, images))


# One jitted forward for every model/variables pair (the model is a static argument).
_apply = jax.jit(lambda model, variables, x: model.apply(variables, x), static_argnums=0)


def _assert_tree_equal(got, want):
    flat_got = jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, got))[0]
    flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
    assert [jax.tree_util.keystr(p) for p, _ in flat_got] == [jax.tree_util.keystr(p) for p, _ in flat_want]
    for (path, a), (_, b) in zip(flat_got, flat_want):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


LOAD_ON_ONE_DEVICE = """
import pickle, sys, jax, numpy as np, dmformer_jax
model, variables = dmformer_jax.load(sys.argv[1])
leaves = jax.tree.leaves(variables)
out = dict(
    devices=jax.device_count(),
    leaf_devices=sorted({len(x.sharding.device_set) for x in leaves}),
    keys=sorted(variables),
    num_classes=model.num_classes,
    variables=jax.tree.map(np.asarray, variables),
)
sys.stdout.buffer.write(pickle.dumps(out))
"""


@pytest.mark.slow  # a subprocess that imports and compiles again (~20 CPU s); CI runs it
def test_load_checkpoint_saved_on_8_devices_onto_1(pretrained):
    workdir, arrays = pretrained
    assert arrays["num_devices"] == 8  # the fixture really saved from 8 devices
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, "-c", LOAD_ON_ONE_DEVICE, workdir], env=env, capture_output=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    out = pickle.loads(p.stdout)
    assert out["devices"] == 1 and out["leaf_devices"] == [1]
    assert out["keys"] == ["batch_stats", "params"]  # no opt_state, no rng, no step
    assert out["num_classes"] == research_fixture.NUM_CLASSES
    # The EMA (not the raw parameters) is what a run that kept one evaluates.
    _assert_tree_equal(out["variables"]["params"], arrays["ema_params"])
    _assert_tree_equal(out["variables"]["batch_stats"], arrays["batch_stats"])


def test_load_forms_of_the_path_and_raw_params(pretrained):
    workdir, arrays = pretrained
    step_dir = os.path.join(workdir, "checkpoints", str(research_fixture.STEP))
    _, raw = dmformer_jax.load(step_dir, use_ema=False)
    _assert_tree_equal(raw["params"], arrays["params"])
    _, via_checkpoints = dmformer_jax.load(os.path.join(workdir, "checkpoints"), step=research_fixture.STEP)
    _assert_tree_equal(via_checkpoints["params"], arrays["ema_params"])
    with pytest.raises(CheckpointError, match="available"):
        dmformer_jax.load(workdir, step=999)
    with pytest.raises(CheckpointError, match="neither a training workdir"):
        dmformer_jax.load(os.path.dirname(workdir) + "/nowhere")


@pytest.mark.parametrize("name", ["export_dir", "model.safetensors"])
def test_export_round_trip(pretrained, loaded, tmp_path, name):
    workdir, arrays = pretrained
    out = str(tmp_path / name)
    dmformer_jax.export_checkpoint(workdir, out)
    meta = dmformer_jax.read_metadata(out)
    assert meta["variant"] == "dmformer_tiny_test" and meta["num_classes"] == 10
    assert meta["image_size"] == 32 and meta["crop_pct"] == 1.0 and meta["ema"] is True
    assert meta["step"] == research_fixture.STEP
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["config"]["model"]["name"] == "dmformer_tiny_test"
    model, variables = dmformer_jax.load(out)
    assert model == loaded[0]
    _assert_tree_equal(variables["params"], arrays["ema_params"])
    _assert_tree_equal(variables["batch_stats"], arrays["batch_stats"])
    with pytest.raises(CheckpointError, match="never overwritten"):
        dmformer_jax.export_checkpoint(workdir, out)


def test_safetensors_export_loads_into_pytorch(loaded, logits, images, tmp_path):
    import torch
    from safetensors.torch import load_file

    from dmformer_jax.torch_model import create_torch_model

    model, variables = loaded
    path = str(tmp_path / "w.safetensors")
    dmformer_jax.export(path, model, variables, image_size=32)
    net = create_torch_model("dmformer_tiny_test", num_classes=10).eval()
    net.load_state_dict(load_file(path), strict=True)
    with torch.no_grad():
        got = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    assert np.std(logits) > 1e-2  # not a comparison between constants
    np.testing.assert_allclose(got, logits, rtol=0, atol=1e-4)


def test_pytorch_interop_both_ways(loaded, logits, images):
    import torch
    model, variables = loaded
    net = dmformer_jax.to_torch(model, variables)
    with torch.no_grad():
        torch_logits = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(torch_logits, logits, rtol=0, atol=1e-4)

    # Back: perturb the PyTorch weights so the round trip cannot pass by accident.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
        want = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    back = dmformer_jax.from_torch(model, net.state_dict())
    got = np.asarray(_apply(model, back, images))
    assert np.abs(want - logits).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_features_shapes_and_consistency_with_logits(loaded, logits, images):
    model, variables = loaded
    maps = dmformer_jax.features(model, variables, images)
    assert {k: v.shape for k, v in maps.items()} == {
        "stage_0": (4, 8, 8, 8), "stage_1": (4, 4, 4, 16), "stage_2": (4, 2, 2, 24), "stage_3": (4, 1, 1, 32),
    }
    # The head on the pooled last map reproduces the logits (features are the real trunk).
    p = jax.tree.map(np.asarray, variables["params"])
    pooled = np.asarray(maps["stage_3"], np.float64).mean(axis=(1, 2))
    mu, var = pooled.mean(-1, keepdims=True), pooled.var(-1, keepdims=True)
    normed = (pooled - mu) / np.sqrt(var + 1e-6) * p["head"]["norm"]["scale"] + p["head"]["norm"]["bias"]
    want = normed @ p["head"]["fc"]["kernel"] + p["head"]["fc"]["bias"]
    np.testing.assert_allclose(want, logits, rtol=0, atol=1e-4)


def test_load_with_new_head(pretrained):
    workdir, arrays = pretrained
    with pytest.raises(CheckpointError, match="reset_head=True"):
        dmformer_jax.load(workdir, num_classes=5)
    model, variables = dmformer_jax.load(workdir, num_classes=5, reset_head=True)
    assert model.num_classes == 5
    assert variables["params"]["head"]["fc"]["kernel"].shape == (32, 5)
    trunk = {k: v for k, v in arrays["ema_params"].items() if k != "head"}
    _assert_tree_equal({k: v for k, v in variables["params"].items() if k != "head"}, trunk)
    # Only the classifier (head/fc) is new: the pooled-feature norm is the pretrained one.
    _assert_tree_equal(variables["params"]["head"]["norm"], arrays["ema_params"]["head"]["norm"])
