"""The segmentation task through the training loop, in-process on a tiny ADE20K archive
(tests/test_seg_data.py's writer): a run stopped and resumed equals the uninterrupted
run (every state leaf, optimizer state included, and every logged train metric), and a
rerun whose ``stop_at_step`` is not past the checkpoint does nothing.

Semantic FPN (the head's dropout, BatchNorm) on dmformer_tiny_test with drop path,
EMA and gradient accumulation (stopped mid-accumulation), 64 px crops, batch 8 on the
8 fake CPU devices of tests/conftest.py. (UperNet's train step took 12 minutes to
compile on the loaded 2-core CI-like machine; the loop and data path are the same.)
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import subprocess_runs as sr
from dmformer_jax import checkpoint as ckpt
from dmformer_jax.tasks import get_task
from dmformer_jax.train import loop
from dmformer_jax.train.logger import read_metrics
from test_seg_data import write_archive

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("persistent_compile_cache")]

TOTAL, STOP = 4, 3


@pytest.fixture(scope="module")
def ade_dirs(tmp_path_factory):
    manual = tmp_path_factory.mktemp("manual")
    write_archive(manual)
    return str(manual), str(tmp_path_factory.mktemp("tfds"))


def _config(ade_dirs, **overrides):
    from configs.seg_common import get_seg_config

    manual, data_dir = ade_dirs
    c = get_seg_config("fpn", "dmformer_tiny_test")
    c.model.channels, c.model.neck_channels, c.model.drop_path_rate = 16, 16, 0.1
    c.data.manual_dir, c.data.data_dir = manual, data_dir
    c.data.image_size, c.data.shuffle_buffer = 64, 16
    c.batch_size = c.eval_batch_size = 8
    c.num_train_steps = TOTAL
    c.optim.base_lr, c.optim.warmup_steps = 1e-3, 1
    c.optim.grad_accum_steps, c.optim.ema_decay, c.optim.grad_clip_norm = 2, 0.9, 1.0
    c.log_every_steps, c.checkpoint_every_steps = 1, 2
    c.eval_every_steps, c.eval_at_end = 1000, False
    c.async_checkpointing = False
    for k, v in overrides.items():
        c[k] = v
    return c


def _state(config, workdir, step=None):
    """Checkpoint ``step``'s (default: the newest) state as NumPy arrays, and its step."""
    s = loop._setup(config, get_task(config), get_task(config).data_module().dataset_info(config))
    mngr = ckpt.make_manager(workdir, create=False)
    step = ckpt.latest_step(mngr) if step is None else step
    state, _ = ckpt.restore(mngr, step, s.abstract_state)
    mngr.close()
    return step, jax.tree.map(np.asarray, state)


def _train_records(workdir):
    return [{k: v for k, v in r.items() if k not in ("time", "img_per_sec")}
            for r in read_metrics(workdir) if r["split"] == "train"]


def test_seg_resume_equals_uninterrupted_and_a_stop_before_the_checkpoint_does_nothing(ade_dirs, tmp_path, capsys):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    assert loop.train_and_evaluate(_config(ade_dirs), straight).step == TOTAL

    first = loop.train_and_evaluate(_config(ade_dirs, stop_at_step=STOP), resumed)
    assert first.step == STOP and first.stopped_early

    # stop_at_step at or below the checkpoint's step: nothing to train, nothing written.
    before = sr.snapshot(resumed)
    capsys.readouterr()
    for stop in (STOP, STOP - 1):
        result = loop.train_and_evaluate(_config(ade_dirs, stop_at_step=stop), resumed)
        assert (result.step, result.eval_metrics, result.stopped_early) == (STOP, None, True)
        out = capsys.readouterr().out
        assert f"nothing to do: config.stop_at_step={stop} but the run is already at step {STOP}" in out, out
        assert "compiled the train step" not in out
    assert sr.snapshot(resumed) == before

    assert loop.train_and_evaluate(_config(ade_dirs), resumed).step == TOTAL
    assert f"resuming from checkpoint step {STOP}" in capsys.readouterr().out

    config = _config(ade_dirs)
    step_a, a = _state(config, straight)
    step_b, b = _state(config, resumed)
    assert step_a == step_b == TOTAL == int(a.step) == int(b.step)
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in la] == [p for p, _ in lb]
    paths = [jax.tree_util.keystr(p) for p, _ in la]
    for key in (".params", ".batch_stats", ".ema_params", ".opt_state", ".rng"):
        assert any(p.startswith(key) for p in paths), key
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    # The compared states are trained ones: most parameters moved after step 2.
    _, mid = _state(config, straight, step=2)
    moved = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(mid.params), jax.tree.leaves(a.params))]
    assert sum(moved) > len(moved) // 2

    records_a, records_b = _train_records(straight), _train_records(resumed)
    assert [r["step"] for r in records_a] == list(range(1, TOTAL + 1))
    assert {"loss", "pixel_acc", "lr", "grad_norm"} <= set(records_a[0])
    assert records_b == records_a
