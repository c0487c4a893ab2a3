"""Save and restore a whole train state in-process, every leaf compared (issue 15).

The state is a `TrainState` with the trainer's optimizer (AdamW + clipping inside
`MultiSteps`, EMA on) whose every leaf, optimizer moments and counters included, holds
distinct random values, so a restore that drops, re-initialises or mixes up any
part of it differs somewhere. No compilation: seconds, not the minutes of the
subprocess resume tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_synthetic as syn
from dmformer_jax.errors import CheckpointError
from dmformer_jax import checkpoint as ckpt
from dmformer_jax.train import loop
from dmformer_jax.train import mesh as mesh_lib
from dmformer_jax.train import optim
from dmformer_jax.train import state as state_lib

STEP = 6


def _params_shapes():
    """A small parameter tree with the trainer's leaf kinds (few shapes: few compiles)."""
    f32 = np.float32
    return {
        "params": {
            "stem": {"conv": {"kernel": ((3, 3, 3, 8), f32), "bias": ((8,), f32)}, "norm": {"scale": ((8,), f32)}},
            "block": {"layer_scale1": {"gamma": ((8,), f32)}},
            "head": {"kernel": ((8, 5), f32), "bias": ((5,), f32)},
        },
        "batch_stats": {"stem": {"bn1": {"mean": ((8,), f32), "var": ((8,), f32)}}},
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``(config, setup, workdir, numpy state)``: one saved step of the trainer's state.

    The optimizer is the trainer's (`optim.make_optimizer`: AdamW with clipping inside
    `MultiSteps`, EMA on); the model is a small stand-in tree (Orbax compiles a copy
    per distinct array shape, ~20 s for the tiny DMFormer on a busy CPU).
    """
    config = syn.tiny_config(**{"optim.ema_decay": 0.9, "optim.grad_accum_steps": 2, "optim.grad_clip_norm": 1.0})
    plan = optim.plan_steps(config, syn.NUM_TRAIN)
    tx, schedule = optim.make_optimizer(config, plan)
    mesh = mesh_lib.make_mesh()
    shapes = jax.tree.map(lambda t: jax.ShapeDtypeStruct(*t), _params_shapes(), is_leaf=lambda t: isinstance(t, tuple))

    def init():
        params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["params"])
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32), params=params,
            batch_stats=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["batch_stats"]),
            opt_state=tx.init(params), ema_params=params, rng=jnp.zeros((2,), jnp.uint32),
        )

    replicated = mesh_lib.replicated(mesh)
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), jax.eval_shape(init))
    s = loop._Setup(None, tx, schedule, plan, mesh, abstract, syn.NUM_CLASSES)

    rng = np.random.default_rng(0)

    def fill(a):
        if np.issubdtype(a.dtype, np.floating):
            value = rng.normal(size=a.shape).astype(a.dtype)
        else:
            value = rng.integers(1, 1000, size=a.shape).astype(a.dtype)
        return jax.device_put(value, a.sharding)

    state = jax.tree.map(fill, abstract)
    state = state.replace(step=jax.device_put(np.int32(STEP), replicated))
    workdir = str(tmp_path_factory.mktemp("ckpt_state"))
    # Step 6 is off the save interval: after step 4, only a forced save (as the loop's
    # final one) writes it.
    mngr = ckpt.make_manager(workdir, save_interval_steps=4, async_checkpointing=False)
    older = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
    assert ckpt.save(mngr, 4, older, loop.checkpoint_meta(config, syn.NUM_CLASSES, 4))
    assert not ckpt.save(mngr, 5, state, loop.checkpoint_meta(config, syn.NUM_CLASSES, 5))  # skipped
    assert ckpt.save(mngr, STEP, state, loop.checkpoint_meta(config, syn.NUM_CLASSES, STEP), force=True)
    mngr.wait_until_finished()
    mngr.close()
    return config, s, workdir, jax.tree.map(np.asarray, state)


def _assert_same_state(restored, expected):
    got = jax.tree_util.tree_leaves_with_path(restored)
    want = jax.tree_util.tree_leaves_with_path(expected)
    assert [p for p, _ in got] == [p for p, _ in want]
    assert len(want) > 30
    fields = {"." + jax.tree_util.keystr(p).split("[")[0].split(".")[1] for p, _ in want}
    assert fields == {".step", ".params", ".batch_stats", ".opt_state", ".ema_params", ".rng"}, fields
    for (path, g), (_, w) in zip(got, want):
        g = np.asarray(g)
        assert g.dtype == w.dtype and g.shape == w.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))


def test_checkpoint_round_trip_keeps_every_leaf(saved):
    _, s, workdir, expected = saved
    mngr = ckpt.make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        state, meta = ckpt.restore(mngr, STEP, s.abstract_state)
    finally:
        mngr.close()
    assert meta["step"] == STEP
    _assert_same_state(state, expected)
    # the optimizer state really is there (moments of AdamW inside MultiSteps, accumulators)
    opt_leaves = jax.tree.leaves(expected.opt_state)
    assert sum(x.size for x in opt_leaves) > 2 * sum(x.size for x in jax.tree.leaves(expected.params))


def test_trainer_resume_restores_the_saved_state_not_a_fresh_one(saved):
    config, s, workdir, expected = saved
    state, start = loop._restore_or_init(config, workdir, s)
    assert start == STEP
    _assert_same_state(state, expected)


def _other_model(abstract):
    """``abstract`` with a 7-class head instead of 5 (another model)."""
    def head(path, leaf):
        keys = jax.tree_util.keystr(path)
        if "['head']['kernel']" in keys:
            return jax.ShapeDtypeStruct((8, 7), leaf.dtype, sharding=leaf.sharding)
        if "['head']['bias']" in keys:
            return jax.ShapeDtypeStruct((7,), leaf.dtype, sharding=leaf.sharding)
        return leaf
    return jax.tree_util.tree_map_with_path(head, abstract)


def test_restore_into_another_model_names_the_leaf(saved):
    config, s, workdir, _ = saved
    other = _other_model(s.abstract_state)
    mngr = ckpt.make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        with pytest.raises(CheckpointError, match=r"another model or optimizer \(dmformer_tiny_test, depths \(1, 1, 1, 1\), widths \(8, 16, 24, 32\), "
                           r"4 classes\): "
                           r"params/head/bias has shape \(5,\) in the checkpoint but \(7,\) in this run"):
            ckpt.restore(mngr, STEP, other)
    finally:
        mngr.close()
    # The trainer's resume: a checkpoint of another model is an error, never a fresh start...
    with pytest.raises(CheckpointError, match="another model or optimizer"):
        ckpt.restore_latest(workdir, other, architecture={"depths": [9]}, log=lambda _: None)
    # ...while one written by this very model that does not fit its tree is damaged.
    architecture = loop.checkpoint_meta(config, syn.NUM_CLASSES, 0)["architecture"]
    with pytest.raises(CheckpointError, match="no readable checkpoint.*does not match its own model"):
        ckpt.restore_latest(workdir, other, architecture=architecture, log=lambda _: None)


def test_restore_into_a_model_with_a_leaf_more_or_less_names_it(saved):
    """A leaf only one side has is another model too (not only a shape that differs)."""
    _, s, workdir, _ = saved
    extra = s.abstract_state.replace(params={**s.abstract_state.params, "extra": s.abstract_state.params["head"]})
    fewer = s.abstract_state.replace(params={k: v for k, v in s.abstract_state.params.items() if k != "block"})
    mngr = ckpt.make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        with pytest.raises(CheckpointError, match=r"^checkpoint .*checkpoints/6 is of another model or optimizer .*: "
                                                  r"params/extra/bias is missing from the checkpoint;"):
            ckpt.restore(mngr, STEP, extra)
        with pytest.raises(CheckpointError, match=r"params/block/layer_scale1/gamma is in the checkpoint but not "
                                                  r"in this run's model/optimizer;"):
            ckpt.restore(mngr, STEP, fewer)
    finally:
        mngr.close()


def test_restore_reads_the_step_asked_for(saved):
    _, s, workdir, expected = saved
    mngr = ckpt.make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        state, meta = ckpt.restore(mngr, 4, s.abstract_state)
    finally:
        mngr.close()
    assert meta["step"] == 4
    want = jax.tree.map(lambda p: p + 1.0, expected.params)
    for g, w in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(g), w)
