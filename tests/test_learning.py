"""The trainer learns (issue 15): the real loop, train step and input pipeline, on the
embedded digits dataset, cut the loss and lift eval top-1 far above chance.

Unlike the resume / multi-host / soak tests, which compare two runs of the same code,
this fails if the code itself is wrong in a way both runs share: a flipped gradient
sign, labels mapped to the wrong images or classes, a loss that ignores its targets.

Cost: 30-40 s on 2 busy CPU cores (marked slow: it trains). The model is dmformer_tiny_test with the XLA conv
implementations (they compile ~2x faster on CPU than 'auto' and compute the same
function, see test_models.py); checkpoint writes are skipped (Orbax compiles one copy
per array shape, ~15 s; checkpointing has its own tests), everything else is
`loop.train_and_evaluate` as ``train.py`` runs it.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import dmformer_jax.data as data
from configs.digits import get_config
from dmformer_jax.train import loop
from dmformer_jax.train import state as state_lib
from dmformer_jax.train.logger import read_metrics

STEPS = 30

pytestmark = pytest.mark.slow  # training, ~30-40 s on a busy 2-core CPU


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.model.depthwise_impl = "xla"
    config.model.conv_impl = "xla"
    config.num_train_steps = STEPS
    config.optim.warmup_epochs = 0.0
    config.log_every_steps = 5
    config.checkpoint_every_steps = 1000
    config.eval_every_steps = 1000
    config.async_checkpointing = False
    config.optim.ema_decay = 0.5  # EMA on: the reported eval must come from it
    workdir = str(tmp_path_factory.mktemp("learn"))
    saved = []
    mp = pytest.MonkeyPatch()
    mp.setattr(loop.ckpt.Saver, "save", lambda self, step, state, meta, **kw: saved.append(state))
    try:
        result = loop.train_and_evaluate(config, workdir)
    finally:
        mp.undo()
    train = [r for r in read_metrics(workdir) if r["split"] == "train"]
    return config, result, train, saved[-1]


def test_loss_falls_clearly(run):
    _, _, train, _ = run
    assert [r["step"] for r in train] == list(range(5, STEPS + 1, 5))
    first, last = train[0]["loss"], train[-1]["loss"]
    assert first > 0.8 * math.log(10)  # starts near chance (label smoothing 0.1)
    assert last < 0.7 * first, (first, last)
    assert train[-1]["top1"] > 0.5


def test_eval_top1_far_above_chance(run):
    _, result, _, _ = run
    assert result.step == STEPS
    metrics = result.eval_metrics
    assert metrics["num_examples"] == 300
    assert metrics["top1"] > 0.6, metrics  # chance is 0.1
    assert metrics["loss"] < 0.75 * math.log(10), metrics


def test_reported_eval_uses_the_ema_parameters(run):
    """The loop's eval loss equals the EMA parameters' loss (computed here in float64
    from their logits), and differs from the raw parameters' loss."""
    config, result, _, state = run
    model = state_lib.build_model(config, 10)
    batches = list(data.make_eval_iterator(config, process_index=0, process_count=1))
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    apply = jax.jit(lambda p, x: model.apply({"params": p, "batch_stats": state.batch_stats}, x, train=False))

    def mean_loss(params):
        z = np.asarray(apply(params, images), np.float64)[mask]
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return -np.mean(logp[np.arange(len(z)), labels[mask]])

    ema, raw = mean_loss(state.ema_params), mean_loss(state.params)
    assert result.eval_metrics["loss"] == pytest.approx(ema, rel=1e-4)
    assert abs(raw - ema) > 1e-3 * ema, (raw, ema)
