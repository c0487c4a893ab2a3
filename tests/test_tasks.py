"""The task interface (dmformer_jax/tasks): the classification task's loss and metric
sums against NumPy float64, the registry's errors, and a toy task trained by the
unchanged loop (the loop is task-generic: a new task needs no loop edit)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_synthetic as syn
from dmformer_jax import tasks
from dmformer_jax.errors import ConfigError, DataError
from dmformer_jax.tasks import ClassificationTask, Task
from dmformer_jax import checkpoint as ckpt
from dmformer_jax.train import loop
from dmformer_jax.train.logger import progress_line, read_metrics

K, B = 9, 12  # more than 5 classes: top-5 is not trivially every example


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_classification_loss_is_soft_label_cross_entropy_with_smoothing_and_mixup():
    """Targets as the input pipeline makes them: mixup of two one-hots, smoothed."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (B, K)).astype(np.float32)
    a, b = rng.integers(0, K, B), rng.integers(0, K, B)
    lam, eps = 0.7, 0.1
    eye = np.eye(K)
    target = lam * eye[a] + (1 - lam) * eye[b]
    target = (1 - eps) * target + eps / K
    loss, metrics = jax.jit(ClassificationTask().loss)(jnp.asarray(logits), {"label": jnp.asarray(target, jnp.float32)})
    expected = -np.mean(np.sum(target * _np_log_softmax(logits.astype(np.float64)), -1))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # top1: argmax of the logits against argmax of the (mixed) targets, i.e. class a.
    assert float(metrics["top1"]) == pytest.approx(np.mean(np.argmax(logits, -1) == a))
    assert set(metrics) == {"top1"}
    # The loss uses the whole soft target: a hard-label loss would differ.
    hard = -np.mean(_np_log_softmax(logits.astype(np.float64))[np.arange(B), a])
    assert abs(hard - expected) > 1e-2


def test_classification_eval_sums_count_only_real_examples():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (B, K)).astype(np.float32)
    labels = rng.integers(0, K, B).astype(np.int32)
    mask = (np.arange(B) < B - 4).astype(np.float32)  # the last 4 rows are padding
    # Padding rows predict their label perfectly: counting them would change top-1.
    logits[-4:] = -10.0
    logits[np.arange(B - 4, B), labels[-4:]] = 10.0
    sums = jax.device_get(jax.jit(ClassificationTask().eval_sums)(
        jnp.asarray(logits), {"label": jnp.asarray(labels)}, jnp.asarray(mask)))
    order = np.argsort(-logits.astype(np.float64), -1)
    real = mask.astype(bool)
    top1 = np.sum(order[real, 0] == labels[real])
    top5 = np.sum(np.any(order[real, :5] == labels[real, None], -1))
    loss = -np.sum(_np_log_softmax(logits.astype(np.float64))[np.arange(B), labels][real])
    assert float(sums["top1"]) == top1 and float(sums["top5"]) == top5
    assert top1 < top5 < real.sum()  # the three counts differ: each check has teeth
    assert float(sums["loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(sums["count"]) == B - 4


def test_classification_finalize_divides_totals_by_the_example_count():
    totals = {"top1": np.float32(30), "top5": np.float32(45), "loss": np.float32(60.0), "count": np.float32(50)}
    assert ClassificationTask().finalize(totals) == {"top1": 0.6, "top5": 0.9, "loss": 1.2, "num_examples": 50.0}


def test_classification_log_fields():
    task = ClassificationTask()
    line = progress_line(120, 600, {"loss": 1.234, "top1": 0.563, "lr": 1.2e-3, "grad_norm": 0.87}, 812.0, 201.0,
                         task.progress_fields({"top1": 0.563}))
    assert line == "step 120/600 (20%) | loss 1.2340 | top1 56.3% | lr 1.20e-03 | grad_norm 0.87 | 812 img/s | ETA 0:03:21"
    summary = task.eval_summary({"top1": 0.761, "top5": 0.93, "loss": 1.0, "num_examples": 50000.0})
    assert summary == "top1 76.10% | top5 93.00% | loss 1.0000 | 50000 images"


def test_unknown_task_is_a_one_line_config_error():
    config = syn.tiny_config(task="segmentation_typo")
    with pytest.raises(ConfigError, match=r"^config.task='segmentation_typo' is not a task; use one of "
                                          r"\['classification', 'segmentation'\]$"):
        loop.validate_config(config, device_count=1, process_count=1)


def test_config_without_a_task_field_is_classification():
    """Configs stored in checkpoints written before ``config.task`` existed."""
    config = syn.tiny_config()
    del config["task"]
    assert isinstance(tasks.get_task(config), ClassificationTask)


def test_batch_missing_an_entry_the_task_needs_is_a_data_error():
    task = ClassificationTask()
    task.check_batch({"image": 0, "label": 0}, "train")
    task.check_batch({"image": 0, "label": 0, "mask": 0}, "eval")
    with pytest.raises(DataError, match=r"^train batches have entries \['image'\] but task 'classification' "
                                        r"needs image, label \(missing label\)"):
        task.check_batch({"image": 0}, "train")
    with pytest.raises(DataError, match=r"missing mask"):
        task.check_batch({"image": 0, "label": 0}, "eval")


# ----------------------------------------------------------------------------- the loop


class ToyRegressionTask(Task):
    """Predicts the class index as one number: a task with its own metric names
    (``abs_err`` in training; ``rmse``, ``label_mean`` and ``n`` at eval)."""

    name = "toy_regression"
    train_keys = ("image", "label")
    eval_keys = ("image", "label", "mask")

    def build_model(self, config, info):
        from dmformer_jax.train import state as state_lib

        return state_lib.build_model(config, 1)

    def loss(self, outputs, batch):
        target = jnp.argmax(batch["label"], -1).astype(jnp.float32)  # soft targets in training
        err = outputs[:, 0] - target
        return jnp.mean(err**2), {"abs_err": jnp.mean(jnp.abs(err))}

    def eval_sums(self, outputs, batch, mask):
        target = batch["label"].astype(jnp.float32)
        return {
            "sq_err": jnp.sum((outputs[:, 0] - target) ** 2 * mask),
            "label_sum": jnp.sum(target * mask),
            "n": jnp.sum(mask),
        }

    def finalize(self, totals):
        n = float(totals["n"])
        return {"rmse": float(np.sqrt(totals["sq_err"] / n)), "label_mean": float(totals["label_sum"]) / n, "n": n}

    def eval_target_spec(self, config, batch_size):
        return {"label": ((batch_size,), np.int32)}

    def progress_fields(self, metrics):
        return [f"abs_err {metrics['abs_err']:.3f}"]

    def eval_summary(self, metrics):
        return f"rmse {metrics['rmse']:.3f} | label_mean {metrics['label_mean']:.4f} | {int(metrics['n'])} examples"


@pytest.mark.slow
def test_loop_runs_a_task_it_does_not_know(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tasks.TASKS, ToyRegressionTask.name, ToyRegressionTask)
    config = syn.tiny_config(task=ToyRegressionTask.name, num_train_steps=2, log_every_steps=1,
                             checkpoint_every_steps=2, eval_batch_size=16)
    result = loop.train_and_evaluate(config, str(tmp_path), data=syn)
    out = capsys.readouterr().out

    assert result.step == 2 and set(result.eval_metrics) == {"rmse", "label_mean", "n"}
    # Summed over the whole eval split, padding masked, every example once (50 of 64 slots).
    labels = np.concatenate([b["label"][b["mask"]] for b in syn.make_eval_iterator(
        config, process_index=0, process_count=1)])
    assert len(labels) == syn.NUM_EVAL and result.eval_metrics["n"] == syn.NUM_EVAL
    assert result.eval_metrics["label_mean"] == pytest.approx(labels.mean(), abs=1e-6)

    records = read_metrics(str(tmp_path))
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in evals] == [2]
    assert set(train[0]) == {"step", "split", "time", "loss", "abs_err", "lr", "grad_norm", "img_per_sec"}
    assert set(evals[0]) == {"step", "split", "time", "rmse", "label_mean", "n"}

    steps = [ln for ln in out.splitlines() if ln.startswith("step ")]
    assert len(steps) == 2 and all(" | abs_err " in ln and "top1" not in ln for ln in steps), steps
    assert any(ln.startswith("eval step 2: rmse ") and "| 50 examples |" in ln for ln in out.splitlines()), out
    # The checkpoint's stored config names the task (evaluate_checkpoint rebuilds it).
    meta, _ = ckpt.read_meta(str(tmp_path), 2)
    assert meta["config"]["task"] == ToyRegressionTask.name


@pytest.mark.slow
def test_a_train_batch_without_the_task_entries_stops_before_the_first_step(tmp_path):
    class NoLabels:
        def __getattr__(self, name):
            return getattr(syn, name)

        @staticmethod
        def make_train_iterator(config, **kwargs):
            for batch in syn.make_train_iterator(config, **kwargs):
                yield {"image": batch["image"]}

    config = syn.tiny_config(num_train_steps=2)
    with pytest.raises(DataError, match=r"^train batches have entries \['image'\] but task 'classification'"):
        loop.train_and_evaluate(config, str(tmp_path), data=NoLabels())


def test_eval_totals_add_up_on_the_host_in_int64_past_2_31():
    """Per-batch int32 counts near 2**30 over 5 batches: the totals the task receives
    are exact int64 (> 2**32) and float sums float64. Summed in int32 on the device
    they would wrap around (JAX runs without x64)."""
    from dmformer_jax.train import mesh as mesh_lib

    k = 3
    per_batch = [np.array([2**30 + i, 2**31 - 1 - i, 7 * i], np.int32) for i in range(5)]
    floats = [np.float32(0.1) * (i + 1) for i in range(5)]
    seen = []

    class Counts(Task):
        name = "counts"
        eval_keys = ("image", "mask")

        def build_model(self, config, info):
            raise NotImplementedError

        def loss(self, outputs, batch):
            raise NotImplementedError

        def eval_sums(self, outputs, batch, mask):
            raise NotImplementedError

        def finalize(self, totals):
            seen.append(totals)
            return {"done": 1.0}

        def eval_target_spec(self, config, batch_size):
            return {}

        def progress_fields(self, metrics):
            return []

        def eval_summary(self, metrics):
            return ""

    class Data:
        @staticmethod
        def make_eval_iterator(config, *, process_index, process_count):
            for i in range(5):
                yield {"image": np.full((8, 2), i, np.float32), "mask": np.ones(8, bool)}

    def eval_step(state, batch):  # device int32/float32 sums of the batch it is given
        i = int(np.asarray(batch["image"])[0, 0])
        return {"counts": jnp.asarray(per_batch[i]), "loss": jnp.asarray(floats[i])}

    config = syn.tiny_config(eval_batch_size=8)
    assert loop.run_evaluation(config, None, eval_step, mesh_lib.make_mesh(), Data, Counts()) == {"done": 1.0}
    (totals,) = seen
    expected = [sum(int(b[j]) for b in per_batch) for j in range(k)]
    assert totals["counts"].dtype == np.int64 and totals["counts"].tolist() == expected
    assert expected[0] > 2**32 and expected[1] > 2**33  # past int32 by far
    assert totals["loss"].dtype == np.float64
    assert float(totals["loss"]) == pytest.approx(sum(float(f) for f in floats), rel=1e-7)

    acc = loop.SumAccumulator()
    for b in per_batch:
        acc.add({"c": b, "flag": np.bool_(True)})
    assert acc.totals["c"].tolist() == expected and acc.totals["flag"] == 5
