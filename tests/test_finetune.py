"""merge_pretrained (what each array becomes, the report, the named errors) and
``train.py --config configs/finetune.py --config.init_from=...`` at another resolution."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import dmformer_jax
from dmformer_jax.errors import CheckpointError
from dmformer_jax.models import VARIANTS, Backbone
from dmformer_jax.models.pretrained import merge_pretrained

sys.path.insert(0, os.path.dirname(__file__))
import research_fixture  # noqa: E402
from subprocess_runs import xla_flags  # noqa: E402  (tests/ is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shapes(num_classes, image_size=32, **kw):
    model = dmformer_jax.create_model("dmformer_tiny_test", num_classes=num_classes, **kw)
    x = jnp.zeros((1, image_size, image_size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


def _fill(shapes, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def test_same_architecture_loads_everything():
    target, pre = _fill(_shapes(10), 0), _fill(_shapes(10), 1)
    merged, report = merge_pretrained(target, pre, reset_head=False)
    assert report.missing == report.unexpected == report.reset == [] and report.reshaped == {}
    assert len(report.loaded) == len(jax.tree.leaves(pre))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, merged), pre)


def test_reset_head_keeps_fresh_head_and_loads_the_trunk():
    target, pre = _fill(_shapes(5), 0), _fill(_shapes(10), 1)
    merged, report = merge_pretrained(target, pre, reset_head=True)
    assert report.reset == ["params/head/fc/bias", "params/head/fc/kernel"]
    assert report.reshaped == {"params/head/fc/bias": ((10,), (5,)), "params/head/fc/kernel": ((32, 10), (32, 5))}
    np.testing.assert_array_equal(merged["params"]["head"]["fc"]["kernel"], target["params"]["head"]["fc"]["kernel"])
    # Everything outside the classifier (parameters, BatchNorm statistics, the head's
    # pooled-feature norm) is pretrained.
    for path in (("params", "backbone", "stem"), ("params", "backbone", "stage_3_block_0"),
                 ("batch_stats", "backbone", "stage_2_block_0"), ("params", "head", "norm")):
        got, want = merged, pre
        for part in path:
            got, want = got[part], want[part]
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), want)
    # Same shapes but reset requested: the head is still the fresh one.
    target10 = _fill(_shapes(10), 2)
    merged, report = merge_pretrained(target10, pre, reset_head=True)
    assert report.reset and not report.reshaped
    np.testing.assert_array_equal(merged["params"]["head"]["fc"]["bias"], target10["params"]["head"]["fc"]["bias"])


def test_head_mismatch_without_reset_names_paths_and_fix():
    with pytest.raises(CheckpointError) as e:
        merge_pretrained(_fill(_shapes(5), 0), _fill(_shapes(10), 1), reset_head=False)
    msg = str(e.value)
    assert "params/head/fc/kernel (32, 10)->(32, 5)" in msg and "--config.reset_head=True" in msg
    assert "\n" not in msg


def test_trunk_mismatch_is_an_error_even_with_reset_head():
    wide = _shapes(10, widths=(8, 16, 24, 40))
    with pytest.raises(CheckpointError, match=r"outside the head \(\d+ arrays\): params/backbone/downsample_3/conv/bias \(40,\)->\(32,\)") as e:
        merge_pretrained(_fill(_shapes(10), 0), _fill(wide, 1), reset_head=True)
    assert "config.model" in str(e.value)


def test_missing_and_unexpected_reported_by_path():
    target, pre = _fill(_shapes(10), 0), _fill(_shapes(0), 1)  # headless pretrained backbone
    with pytest.raises(CheckpointError, match="params/head/fc/kernel \\(missing\\)"):
        merge_pretrained(target, pre, reset_head=False)
    _, report = merge_pretrained(target, pre, reset_head=True)
    assert report.reset == ["params/head/fc/bias", "params/head/fc/kernel"]
    _, report = merge_pretrained(_fill(_shapes(0), 0), _fill(_shapes(10), 1), reset_head=False)
    assert report.unexpected == ["params/head/fc/bias", "params/head/fc/kernel"]  # dropped, reported
    deeper = _fill(_shapes(10, depths=(1, 1, 2, 1)), 1)
    with pytest.raises(CheckpointError, match="missing: none; unexpected: batch_stats/backbone/stage_2_block_1/token_mixer/bn/mean"):
        merge_pretrained(_fill(_shapes(10), 0), deeper, reset_head=False)
    _, report = merge_pretrained(_fill(_shapes(10), 0), deeper, reset_head=False, strict=False)
    assert any(p.startswith("params/backbone/stage_2_block_1/") for p in report.unexpected)


class Wrapper(nn.Module):
    """A dense-prediction-shaped model: the backbone under a prefix plus its own head."""

    @nn.compact
    def __call__(self, x):
        backbone = Backbone(**VARIANTS["dmformer_tiny_test"].model_kwargs(), name="backbone")
        return nn.Dense(3, name="decode_head")(backbone(x)["stage_2"])


def test_classifier_backbone_loads_into_a_model_holding_it_under_a_prefix():
    classifier = _fill(_shapes(10), 1)
    shapes = jax.eval_shape(lambda: Wrapper().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    target = _fill(shapes, 2)
    merged, report = merge_pretrained(target, classifier, reset_head=False)
    # Exactly the classifier's backbone arrays (parameters and BatchNorm statistics) ...
    for collection in ("params", "batch_stats"):
        want = traverse_util.flatten_dict(classifier[collection]["backbone"])
        got = traverse_util.flatten_dict(jax.tree.map(np.asarray, merged[collection]["backbone"]))
        assert set(got) == set(want)
        for path in want:
            np.testing.assert_array_equal(got[path], want[path])
    # ... the decode head stays at init ...
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, merged["params"]["decode_head"]),
                 target["params"]["decode_head"])
    assert report.missing == ["params/decode_head/bias", "params/decode_head/kernel"]
    # ... and the classifier head is ignored on purpose, said so in the report.
    assert report.ignored == ["params/head/fc/bias", "params/head/fc/kernel",
                              "params/head/norm/bias", "params/head/norm/scale"]
    assert report.unexpected == [] and report.reshaped == {}
    assert len(report.loaded) == len(jax.tree.leaves(classifier["params"]["backbone"])) + len(
        jax.tree.leaves(classifier["batch_stats"]["backbone"]))
    assert "ignored on purpose (classifier head" in report.summary()


def test_prefix_names_where_the_backbone_lives():
    classifier = _fill(_shapes(10), 1)
    shapes = jax.eval_shape(lambda: Wrapper().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    nested = jax.tree.map(lambda a: a, {c: {"encoder": t} for c, t in _fill(shapes, 2).items()})
    merged, report = merge_pretrained(nested, classifier, prefix=("encoder", "backbone"))
    np.testing.assert_array_equal(merged["params"]["encoder"]["backbone"]["stem"]["conv1"]["kernel"],
                                  classifier["params"]["backbone"]["stem"]["conv1"]["kernel"])
    assert report.missing == ["params/encoder/decode_head/bias", "params/encoder/decode_head/kernel"]
    # The wrong prefix would load nothing: an error naming it, not a silent init.
    with pytest.raises(CheckpointError, match="holds nothing under 'backbone'.*prefix="):
        merge_pretrained(nested, classifier)


def test_v1_pretrained_trees_merge_like_todays():
    from dmformer_jax.models.legacy import to_v1_tree

    target, pre = _fill(_shapes(10), 0), _fill(_shapes(10), 1)
    v1 = to_v1_tree(pre)
    assert "head_norm" in v1["params"] and "stem" in v1["batch_stats"]
    merged, report = merge_pretrained(target, v1, reset_head=False)
    assert report.missing == report.unexpected == [] and report.reshaped == {}
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, merged), pre)


def test_resolution_does_not_change_any_parameter_shape():
    # No position embeddings: weights trained at 32 fit a model run at 64 or 288 unchanged.
    assert jax.tree.map(lambda s: s.shape, _shapes(10, 32)) == jax.tree.map(lambda s: s.shape, _shapes(10, 288))


@pytest.mark.slow
def test_train_py_finetunes_from_checkpoint_at_another_resolution(tmp_path_factory, tmp_path):
    workdir, arrays = research_fixture.cached_checkpoint(tmp_path_factory)
    env = dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    out = tmp_path / "ft"
    cmd = [sys.executable, "train.py", "--config", "configs/finetune.py", f"--workdir={out}",
           f"--config.init_from={workdir}", "--config.reset_head=True", "--config.data.image_size=64",
           "--config.num_train_steps=1", "--config.batch_size=8", "--config.eval_batch_size=8",
           "--config.data.shuffle_buffer=16", "--config.eval_at_end=False",
           f"--config.data.data_dir={tmp_path_factory.getbasetemp() / 'tfds'}"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "initialised from" in p.stdout and "reset: params/head/fc/bias, params/head/fc/kernel" in p.stdout
    assert "missing: none; unexpected: none; reshaped: none" in p.stdout
    # The fine-tuned run's step-1 trunk moved away from, but started at, the pretrained EMA.
    model, variables = dmformer_jax.load(str(out), use_ema=False)
    assert model.num_classes == 10
    want_tree = arrays["ema_params"]
    diffs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         {k: v for k, v in variables["params"].items() if k != "head"},
                         {k: v for k, v in want_tree.items() if k != "head"})
    # One AdamW step at lr ~1e-6..1e-3 moves each weight by at most ~lr (+ decay): the
    # trunk is the pretrained one, not a fresh init (which differs by O(0.1)).
    assert max(jax.tree.leaves(diffs)) < 5e-3, diffs
