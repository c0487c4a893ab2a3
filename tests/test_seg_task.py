"""The segmentation task: loss, eval sums and metrics against independent NumPy float64
computations; the model built from the configs; the poly schedule; the task's data
module and RNG streams; and (slow) `train.py` end to end on configs/seg_default.py."""

from __future__ import annotations

import importlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dmformer_jax.errors import ConfigError
from dmformer_jax.metrics.segmentation import area_counts_np, metrics_from_totals
from dmformer_jax.tasks import TASKS, ClassificationTask, SegmentationTask, get_task
from dmformer_jax.train import optim
from dmformer_jax.train.loop import validate_config


# ----------------------------------------------------------------- NumPy references


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64: PyTorch bilinear, align_corners=False, no antialiasing."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m


def _resize_np(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """x [H, W, K] float64 -> [h, w, K]."""
    return np.einsum("ih,jw,hwk->ijk", _bilinear_matrix(x.shape[0], h), _bilinear_matrix(x.shape[1], w), x)


def _ce_np(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean CE over labels != 255 of logits [B, h, w, K] resized to labels [B, H, W]."""
    total, correct, count = 0.0, 0, 0
    for b in range(labels.shape[0]):
        z = _resize_np(np.asarray(logits[b], np.float64), *labels.shape[1:])
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                y = labels[b, i, j]
                if y == 255:
                    continue
                total -= logp[i, j, y]
                correct += int(np.argmax(logp[i, j]) == y)
                count += 1
    return total / count, correct / count


# ----------------------------------------------------------------- loss


def _labels(rng, shape, k, ignore_frac=0.3):
    labels = rng.integers(0, k, shape)
    labels[rng.random(shape) < ignore_frac] = 255
    return labels.astype(np.int32)


def test_loss_matches_numpy_with_ignore_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 6, 5)).astype(np.float32) * 3
    labels = _labels(rng, (2, 16, 24), 5)
    labels[1, :8] = 255  # a large ignored area: the mean must be over the other pixels only
    loss, metrics = SegmentationTask().loss(jnp.asarray(logits), {"label": jnp.asarray(labels)})
    ref_loss, ref_acc = _ce_np(logits, labels)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["pixel_acc"]), ref_acc, rtol=1e-6)
    assert "aux_loss" not in metrics


def test_aux_loss_is_added_with_its_weight():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    aux = rng.normal(size=(2, 2, 2, 4)).astype(np.float32) * 2
    labels = _labels(rng, (2, 32, 32), 4)
    task = SegmentationTask()
    task.aux_loss_weight = 0.4
    outputs = {"logits": jnp.asarray(logits), "aux_logits": jnp.asarray(aux)}
    loss, metrics = jax.jit(task.loss)(outputs, {"label": jnp.asarray(labels)})
    main, _ = _ce_np(logits, labels)
    aux_ref, _ = _ce_np(aux, labels)
    np.testing.assert_allclose(float(metrics["aux_loss"]), aux_ref, rtol=1e-5)
    np.testing.assert_allclose(float(loss), main + 0.4 * aux_ref, rtol=1e-5)


def test_all_ignored_batch_gives_a_finite_zero_loss():
    logits = jnp.ones((1, 2, 2, 3))
    loss, metrics = SegmentationTask().loss(logits, {"label": jnp.full((1, 8, 8), 255, jnp.int32)})
    assert float(loss) == 0.0 and float(metrics["pixel_acc"]) == 0.0


# ----------------------------------------------------------------- eval sums and metrics


def _eval_batch(rng, k=4):
    """Two images in a (32, 32) bucket (logits at stride 4), labels padded to (12, 14)."""
    logits = rng.normal(size=(3, 8, 8, k)).astype(np.float32)
    image_hw = np.array([[32, 24], [20, 32], [32, 32]], np.int32)
    label_hw = np.array([[12, 9], [7, 14], [12, 14]], np.int32)
    label = np.full((3, 12, 14), 255, np.int32)
    for b, (h, w) in enumerate(label_hw):
        label[b, :h, :w] = _labels(rng, (h, w), k, ignore_frac=0.1)
    label[0, 0, 0] = 255
    mask = np.array([True, True, False])  # the third is padding: must not count
    batch = {"image": np.zeros((3, 32, 32, 3), np.float32), "image_hw": image_hw, "label": label,
             "label_hw": label_hw, "mask": mask}
    return logits, batch


def _sums_np(logits, batch, k):
    """Per-class counts from a float64 NumPy transcription of mmseg's whole-image test."""
    hb, wb = batch["image"].shape[1:3]
    h, w = logits.shape[1:3]
    totals = {key: np.zeros(k, np.int64) for key in ("intersection", "union", "pred_area", "label_area")}
    for b in np.flatnonzero(batch["mask"]):
        ih, iw = batch["image_hw"][b]
        lh, lw = batch["label_hw"][b]
        valid_logits = logits[b, : ih * h // hb, : iw * w // wb].astype(np.float64)
        full = _resize_np(_resize_np(valid_logits, ih, iw), lh, lw)
        counts = area_counts_np(np.argmax(full, -1), batch["label"][b, :lh, :lw], k)
        for key in totals:
            totals[key] += counts[key]
    return totals


def test_eval_sums_and_finalize_match_numpy():
    rng = np.random.default_rng(2)
    k = 4
    task = SegmentationTask()
    totals = None
    refs = {key: np.zeros(k, np.int64) for key in ("intersection", "union", "pred_area", "label_area")}
    for _ in range(2):  # two batches: the loop adds the sums
        logits, batch = _eval_batch(rng, k)
        sums = jax.jit(task.eval_sums)(jnp.asarray(logits), batch, jnp.asarray(batch["mask"], jnp.float32))
        sums = jax.device_get(sums)
        ref = _sums_np(logits, batch, k)
        for key in refs:
            np.testing.assert_array_equal(sums[key], ref[key], err_msg=key)
            refs[key] += ref[key]
        assert float(sums["num_images"]) == 2
        totals = sums if totals is None else {key: totals[key] + sums[key] for key in sums}
    metrics = task.finalize(totals)
    ref = metrics_from_totals(refs)
    # And mIoU from the definition (nanmean of I/U over classes with U > 0).
    iou = refs["intersection"] / np.where(refs["union"] > 0, refs["union"], np.nan)
    assert metrics["mIoU"] == pytest.approx(np.nanmean(iou), rel=1e-12)
    for key in ("mIoU", "aAcc", "mAcc"):
        assert metrics[key] == pytest.approx(ref[key], rel=1e-12), key
    assert metrics["num_images"] == 4
    np.testing.assert_allclose([metrics[f"IoU_{c}"] for c in range(k)], ref["IoU"], rtol=1e-12)
    assert all(isinstance(v, float) for v in metrics.values())  # what the metrics writer takes


def test_finalize_keeps_nan_for_absent_classes():
    zeros = np.zeros(3, np.int64)
    totals = {"intersection": np.array([5, 0, 0]), "union": np.array([10, 4, 0]),
              "pred_area": np.array([6, 4, 0]), "label_area": np.array([9, 0, 0]), "num_images": np.float32(2)}
    metrics = SegmentationTask().finalize({**{k: zeros for k in totals}, **totals})
    assert metrics["mIoU"] == pytest.approx(0.25)  # (0.5 + 0) / 2: class 1 only predicted
    assert np.isnan(metrics["IoU_2"]) and metrics["IoU_1"] == 0.0
    assert metrics["aAcc"] == pytest.approx(5 / 9)


# ----------------------------------------------------------------- model, configs, loop hooks


SEG_CONFIGS = [f"configs/ade20k_{h}_dmformer_{v}.py" for h in ("fpn", "upernet") for v in "tsl"]


def _keys(c, prefix=""):
    out = set()
    for k, v in c.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else {prefix + k}
    return out


@pytest.mark.parametrize("path", SEG_CONFIGS + ["configs/seg_default.py"])
def test_seg_configs_load_validate_and_share_the_schema(path):
    from configs.seg_common import get_seg_base_config

    module = importlib.import_module(path[:-3].replace("/", "."))
    config = module.get_config()
    assert f"--config {path}" in module.__doc__
    assert _keys(config) == _keys(get_seg_base_config())
    assert config.task == "segmentation" and config.model.head in ("fpn", "upernet")
    validate_config(config, device_count=1, process_count=1)
    assert isinstance(get_task(config), SegmentationTask)


def test_recipe_values_follow_the_issue_table():
    from configs import ade20k_fpn_dmformer_s as fpn, ade20k_upernet_dmformer_s as upernet

    c = fpn.get_config()
    assert (c.num_train_steps, c.batch_size, c.optim.base_lr, c.optim.weight_decay) == (40_000, 32, 2e-4, 1e-4)
    assert (c.optim.schedule, c.optim.poly_power, c.optim.warmup_steps, c.eval_every_steps) == ("poly", 0.9, 0, 4000)
    assert c.optim.weight_decay_params == "all" and c.model.name == "dmformer_s" and c.model.drop_path_rate is None
    u = upernet.get_config()
    assert (u.num_train_steps, u.batch_size, u.optim.base_lr, u.optim.weight_decay) == (160_000, 16, 6e-5, 0.01)
    assert (u.optim.poly_power, u.optim.warmup_steps, u.optim.warmup_ratio, u.eval_every_steps) == (1.0, 1500, 1e-6, 16_000)
    assert u.optim.weight_decay_params == "all_but_norms" and u.model.drop_path_rate == 0.3
    # lr is not scaled by batch in the segmentation recipes
    plan = optim.plan_steps(u, 20_210)
    assert plan.peak_lr == pytest.approx(6e-5) and plan.warmup_updates == 1500


class _Info:
    num_classes = 7


def test_build_model_passes_the_config_fields():
    from configs import seg_default
    from configs.seg_common import get_seg_config

    config = seg_default.get_config()
    model = get_task(config).build_model(config, _Info())
    assert (model.head, model.num_classes, model.channels, model.neck_channels) == ("fpn", 7, 32, 32)
    assert model.dtype == jnp.float32  # 'auto' on CPU

    up = get_seg_config("upernet", "dmformer_tiny_test")
    up.model.aux_loss_weight = 0.25
    up.model.dtype = "float32"
    task = get_task(up)
    model = task.build_model(up, _Info())
    assert model.has_aux_head and task.aux_loss_weight == 0.25

    up.model.head = "segformer"
    with pytest.raises(ConfigError, match="segformer"):
        get_task(up).build_model(up, _Info())
    up.model.head = None
    with pytest.raises(ConfigError, match="model.head"):
        get_task(up).build_model(up, _Info())


def test_each_task_chooses_its_data_module():
    import dmformer_jax.data as cls_data
    import dmformer_jax.data.segmentation as seg_data
    from dmformer_jax.train.loop import _data_module

    assert TASKS["segmentation"] is SegmentationTask
    assert _data_module(None, SegmentationTask()) is seg_data
    assert _data_module(None, ClassificationTask()) is cls_data
    assert _data_module(cls_data, SegmentationTask()) is cls_data  # an explicit module wins


def test_train_step_rngs_keep_drop_path_and_add_dropout():
    from dmformer_jax.train.step import model_rngs

    key = jax.random.key(3)
    rngs = model_rngs(SegmentationTask(), key)
    assert set(rngs) == {"drop_path", "dropout"}
    # drop_path is the step's key itself (classification runs draw what they drew before)
    np.testing.assert_array_equal(jax.random.key_data(rngs["drop_path"]), jax.random.key_data(key))
    assert not np.array_equal(jax.random.key_data(rngs["dropout"]), jax.random.key_data(key))


@pytest.mark.slow  # UperNet init + train-mode compile (~17 CPU s); CI runs it
def test_upernet_training_outputs_feed_the_aux_loss_with_the_step_rngs():
    """The model in train mode with the step's RNG streams (dropout included) returns
    aux logits, and the task's loss adds them with the configured weight."""
    from configs.seg_common import get_seg_config
    from dmformer_jax.train.step import model_rngs

    config = get_seg_config("upernet", "dmformer_tiny_test")
    config.model.channels, config.model.aux_channels, config.model.aux_loss_weight = 16, 8, 0.3
    task = get_task(config)
    model = task.build_model(config, _Info())
    images = jnp.asarray(np.random.default_rng(4).normal(size=(2, 64, 64, 3)), jnp.float32)
    # Jitted: op-by-op UperNet costs ~6x the CPU of one compile (2026-11-27).
    variables = jax.jit(model.init)(jax.random.key(0), images)
    outputs, _ = jax.jit(lambda v, x, rngs: model.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"]))(
        variables, images, model_rngs(task, jax.random.key(1)))
    assert outputs["logits"].shape == (2, 16, 16, 7) and outputs["aux_logits"].shape == (2, 4, 4, 7)
    labels = _labels(np.random.default_rng(5), (2, 64, 64), 7)
    loss, metrics = task.loss(outputs, {"label": jnp.asarray(labels)})
    main, _ = _ce_np(np.asarray(outputs["logits"]), labels)
    aux, _ = _ce_np(np.asarray(outputs["aux_logits"]), labels)
    np.testing.assert_allclose(float(loss), main + 0.3 * aux, rtol=1e-5)


# ----------------------------------------------------------------- poly schedule


def _poly_ref(t, peak, total, power, end, warmup, ratio):
    lr = (peak - end) * (1 - t / total) ** power + end
    if t < warmup:
        lr *= 1 - (1 - t / warmup) * (1 - ratio)
    return lr


@pytest.mark.parametrize("power,warmup", [(0.9, 0), (1.0, 10)])
def test_poly_schedule_matches_mmcv_formula(power, warmup):
    from configs.seg_common import get_seg_config

    c = get_seg_config("fpn", "dmformer_tiny_test")
    c.num_train_steps, c.batch_size = 100, 4
    c.optim.base_lr, c.optim.poly_power, c.optim.warmup_steps, c.optim.min_lr = 1e-3, power, warmup, 1e-6
    plan = optim.plan_steps(c, 1000)
    sched = optim.learning_rate_schedule(c, plan)
    for t in (0, 1, 5, 9, 10, 11, 50, 99, 100):
        ref = _poly_ref(t, 1e-3, 100, power, 1e-6, warmup, 1e-6)
        assert float(sched(t)) == pytest.approx(ref, rel=1e-5, abs=1e-12), t
    c.optim.schedule = "step"
    with pytest.raises(ConfigError, match="optim.schedule"):
        optim.learning_rate_schedule(c, plan)


def test_weight_decay_params_rules_in_one_adamw_step():
    """Zero gradients: AdamW's update is -lr * wd * param exactly on the decayed leaves."""
    from configs.seg_common import get_seg_config

    c = get_seg_config("fpn", "dmformer_tiny_test")
    c.num_train_steps, c.optim.schedule, c.optim.base_lr, c.optim.weight_decay = 10, "cosine", 0.1, 0.5
    c.optim.warmup_steps, c.optim.min_lr = 0, 0.0
    params = {"conv": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))},
              "norm1": {"scale": jnp.ones((3,)), "bias": jnp.ones((3,))}}
    grads = jax.tree.map(jnp.zeros_like, params)

    def step(rule):
        c.optim.weight_decay_params = rule
        tx, _ = optim.make_optimizer(c, optim.plan_steps(c, 100))
        updates, _ = tx.update(grads, tx.init(params), params)
        return {k: {n: float(u.ravel()[0]) for n, u in v.items()} for k, v in updates.items()}

    decay = pytest.approx(-0.05)
    kernels, but_norms, every = step("kernels"), step("all_but_norms"), step("all")
    assert kernels == {"conv": {"kernel": decay, "bias": 0.0}, "norm1": {"scale": 0.0, "bias": 0.0}}
    assert but_norms == {"conv": {"kernel": decay, "bias": decay}, "norm1": {"scale": 0.0, "bias": 0.0}}
    assert every == {"conv": {"kernel": decay, "bias": decay}, "norm1": {"scale": decay, "bias": decay}}
    c.optim.weight_decay_params = "biases"
    with pytest.raises(ConfigError, match="weight_decay_params='biases'"):
        validate_config(c, device_count=1, process_count=1)
    # A config saved before the field existed keeps its meaning.
    del c.optim["weight_decay_params"]
    c.optim.decay_all_params = True
    assert optim.decay_rule(c) == "all"


# ----------------------------------------------------------------- train.py end to end


# (data flags, eval images, classes): the offline default, and the ADE20K builder and
# pipeline on a tiny ADEChallengeData2016.zip that tests/test_seg_data.py writes.
E2E_DATA = {
    "seg_default": ([], 6, 7),
    "ade20k_tiny_archive": (["--config.data.name=ade20k"], 3, 150),
}


@pytest.mark.slow
@pytest.mark.parametrize("data", sorted(E2E_DATA))
def test_seg_default_trains_and_evaluates_end_to_end(tmp_path_factory, data):
    from tests import subprocess_runs as sp

    env = sp.session_env(tmp_path_factory.getbasetemp())
    env["XLA_FLAGS"] = sp.xla_flags(2)
    workdir = tmp_path_factory.mktemp("seg_e2e") / "run"
    data_flags, num_eval, num_classes = E2E_DATA[data]
    if data == "ade20k_tiny_archive":
        from test_seg_data import write_archive

        manual = tmp_path_factory.mktemp("ade_manual")
        write_archive(manual)
        data_flags = [*data_flags, f"--config.data.manual_dir={manual}"]  # built into the shared data_dir
    base = [
        "--config", "configs/seg_default.py", *data_flags,
        "--config.num_train_steps=3", "--config.batch_size=4", "--config.eval_batch_size=4",
        f"--config.data.eval_split=validation[:{num_eval}]", "--config.data.shuffle_buffer=16",
        # 3 eval shapes (one compiled ahead of time, two traced at their first batch)
        "--config.data.eval_bucket_step=64",
        "--config.log_every_steps=1", "--config.eval_every_steps=2", "--config.checkpoint_every_steps=3",
        "--config.model.drop_path_rate=0.1",
    ]
    p = sp.run(sp.train_cmd(env, workdir, base=base), env, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "eval step 3: mIoU" in out
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "3")), os.listdir(os.path.join(workdir, "checkpoints"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in records if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == [2, 3], evals
    for r in evals:
        assert 0.0 <= r["mIoU"] <= 1.0 and 0.0 <= r["aAcc"] <= 1.0 and r["num_images"] == num_eval
        assert len([k for k in r if k.startswith("IoU_")]) == num_classes, sorted(r)
    trains = [r for r in records if r.get("split") == "train"]
    assert len(trains) == 3 and all(np.isfinite(r["loss"]) and "pixel_acc" in r for r in trains)
