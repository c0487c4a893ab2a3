"""The training loop in-process on synthetic data (8 fake CPU devices from conftest):
NaN stops the run and keeps the last good checkpoint; eval counts each example once."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import train_synthetic as syn
from dmformer_jax import checkpoint as ckpt
from dmformer_jax.tasks import get_task
from dmformer_jax.train import loop

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("persistent_compile_cache")]


class _NanFromStep3:
    """The synthetic data, with NaN images from step 3 on (a diverging run)."""

    def __getattr__(self, name):
        return getattr(syn, name)

    @staticmethod
    def make_train_iterator(config, *, start_step, process_index, process_count):
        for step, batch in enumerate(syn.make_train_iterator(
                config, start_step=start_step, process_index=process_index, process_count=process_count),
                start=start_step):
            if step >= 2:  # the batch of step index 2 is the 3rd step
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
            yield batch


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = syn.tiny_config(num_train_steps=8, log_every_steps=100, checkpoint_every_steps=2)
    with pytest.raises(loop.TrainingDivergedError, match=r"loss is nan at step 3.*last good checkpoint \(step 2\)"):
        loop.train_and_evaluate(config, str(tmp_path), data=_NanFromStep3())
    mngr = ckpt.make_manager(str(tmp_path), create=False)
    assert mngr.all_steps() == [2]  # step 4 (NaN state) was never written
    mngr.close()


def test_eval_counts_every_example_once(tmp_path):
    config = syn.tiny_config(num_train_steps=2, log_every_steps=1, checkpoint_every_steps=2, eval_batch_size=16)
    result = loop.train_and_evaluate(config, str(tmp_path), data=syn)
    assert result.step == 2 and result.eval_metrics["num_examples"] == syn.NUM_EVAL  # 50 of 64 slots

    # Independent count: predictions of the restored params on the 50 real images.
    s = loop._setup(config, get_task(config), syn.dataset_info(config))
    mngr = ckpt.make_manager(str(tmp_path), create=False)
    state, _ = ckpt.restore(mngr, 2, s.abstract_state)
    mngr.close()
    batches = list(syn.make_eval_iterator(config, process_index=0, process_count=1))
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = np.asarray(jax.jit(lambda v, x: s.model.apply(v, x, train=False))(variables, images), np.float64)
    logits, labels = logits[mask], labels[mask]
    top1 = np.mean(np.argmax(logits, -1) == labels)
    top5 = np.mean([lab in np.argsort(-row)[:5] for row, lab in zip(logits, labels)])
    assert result.eval_metrics["top1"] == pytest.approx(top1, abs=1e-6)
    assert result.eval_metrics["top5"] == pytest.approx(top5, abs=1e-6)
    records = [r for r in __import__("dmformer_jax.train.logger", fromlist=["x"]).read_metrics(str(tmp_path))]
    assert [r["split"] for r in records] == ["train", "train", "eval"]
    assert os.listdir(tmp_path / "tensorboard")
