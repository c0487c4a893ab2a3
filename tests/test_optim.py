"""Optimizer: lr scaling and schedule, the weight-decay mask, one AdamW step, MultiSteps."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from configs.common import get_base_config

from dmformer_jax.models import create_model
from dmformer_jax.train import optim


def _config(**kw):
    c = get_base_config()
    c.batch_size = 256
    c.num_train_steps = 1000
    c.optim.warmup_epochs = 1.0
    for k, v in kw.items():
        setattr(c.optim, k, v)
    return c


def test_plan_scales_lr_by_effective_batch_and_counts_updates():
    c = _config(grad_accum_steps=4)
    plan = optim.plan_steps(c, num_train_examples=25_600)  # 100 steps per epoch
    assert plan.peak_lr == pytest.approx(1e-3 * 256 * 4 / 1024)
    assert plan.total_steps == 1000 and plan.total_updates == 250
    assert plan.warmup_updates == 25  # 1 epoch = 100 micro-steps = 25 updates
    c = get_base_config()  # epochs drive the length when num_train_steps is None
    plan = optim.plan_steps(c, num_train_examples=1_281_167)
    assert plan.total_steps == math.ceil(300 * 1_281_167 / 1024)
    assert plan.warmup_updates == round(5 * 1_281_167 / 1024)


def test_schedule_matches_warmup_cosine_formula():
    c = _config()
    plan = optim.plan_steps(c, num_train_examples=25_600)  # 100 warm-up, 1000 total
    sched = optim.learning_rate_schedule(c, plan)
    peak, lo, w, n = plan.peak_lr, c.optim.min_lr, plan.warmup_updates, plan.total_updates

    def reference(t):  # float64, written from the recipe's definition
        if t < w:
            return c.optim.warmup_init_lr + (peak - c.optim.warmup_init_lr) * t / w
        return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * (t - w) / (n - w)))

    for t in [0, 1, 50, 99, 100, 101, 400, 777, 999, 1000]:
        assert float(sched(t)) == pytest.approx(reference(t), rel=1e-5, abs=1e-9), t
    assert float(sched(w)) == pytest.approx(peak, rel=1e-6)


def test_weight_decay_mask_only_kernels():
    model = create_model("dmformer_tiny_test", num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
    mask = optim.weight_decay_mask(shapes)
    flat = {jax.tree_util.keystr(p): (m, leaf) for (p, m), leaf in
            zip(jax.tree_util.tree_flatten_with_path(mask)[0], jax.tree.leaves(shapes))}
    decayed = [k for k, (m, _) in flat.items() if m]
    kept = [k for k, (m, _) in flat.items() if not m]
    assert all(k.endswith("['kernel']") for k in decayed)
    assert all(not k.endswith("['kernel']") for k in kept)
    # Depth-wise kernels (k, k, 1, C) are decayed; every norm/bias/gamma is not.
    assert any("branch_0" in k for k in decayed)
    for needle in ("['bias']", "['scale']", "['gamma']", "bn1", "['head']['norm']"):
        assert any(needle in k for k in kept), needle
    assert not any("['gamma']" in k or "['scale']" in k or "['bias']" in k for k in decayed)


def test_one_adamw_step_decays_kernels_not_biases():
    c = _config(weight_decay=0.1, warmup_init_lr=0.01, grad_clip_norm=None)
    c.optim.warmup_epochs = 0.0
    plan = optim.plan_steps(c, num_train_examples=25_600)
    tx, sched = optim.make_optimizer(c, plan)
    params = {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}}
    grads = {"dense": {"kernel": jnp.full((2, 3), 0.5), "bias": jnp.full((3,), 0.5)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr = float(sched(0))
    # NumPy reference of one AdamW step (bias-corrected m/v -> sign(g) * 1 / (1 + eps)).
    m_hat, v_hat = 0.5, 0.25
    adam = m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(updates["dense"]["bias"], -lr * adam, rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["kernel"], -lr * (adam + 0.1 * 2.0), rtol=1e-5)


def test_clipping_and_accumulation():
    c = _config(grad_clip_norm=1.0, grad_accum_steps=2, weight_decay=0.0)
    c.optim.warmup_epochs = 0.0
    plan = optim.plan_steps(c, num_train_examples=25_600)
    tx, sched = optim.make_optimizer(c, plan)
    params = {"w": jnp.zeros((4,))}
    state = tx.init(params)
    g1, g2 = {"w": jnp.array([30.0, 0, 0, 0])}, {"w": jnp.array([10.0, 0, 0, 0])}
    u1, state = tx.update(g1, state, params)
    np.testing.assert_array_equal(u1["w"], 0.0)  # first micro-batch: no update yet
    u2, state = tx.update(g2, state, params)
    # Mean gradient (20, 0, 0, 0) is clipped to norm 1, then Adam's first step ~ -lr·sign.
    np.testing.assert_allclose(u2["w"], [-float(sched(0)), 0, 0, 0], rtol=1e-5)


def test_plan_edge_cases_round_down_and_clamp_the_warmup():
    # Steps not a multiple of the accumulation: whole updates only.
    c = _config(grad_accum_steps=4)
    c.num_train_steps = 1003
    plan = optim.plan_steps(c, num_train_examples=25_600)
    assert plan.total_updates == 250 and isinstance(plan.total_updates, int)
    assert plan.steps_per_epoch == pytest.approx(25_600 / 256)
    # Fewer steps than one accumulation: still one update, and no warm-up.
    c.num_train_steps = 1
    plan = optim.plan_steps(c, num_train_examples=25_600)
    assert (plan.total_updates, plan.warmup_updates) == (1, 0)
    # Warm-up longer than the run is clamped to leave one decaying update...
    for total, expected_warmup in ((2, 1), (3, 2), (10, 9)):
        c = _config(warmup_epochs=5.0)
        c.num_train_steps = total
        plan = optim.plan_steps(c, num_train_examples=25_600)
        assert (plan.total_updates, plan.warmup_updates) == (total, expected_warmup), total
        # ...and the schedule still ends at min_lr on the last update.
        sched = optim.learning_rate_schedule(c, plan)
        assert float(sched(plan.total_updates)) == pytest.approx(c.optim.min_lr, rel=1e-5)
        assert float(sched(plan.warmup_updates)) == pytest.approx(plan.peak_lr, rel=1e-5)


def test_two_adamw_steps_use_the_configured_betas():
    """Two AdamW steps with b1 = 0.5, b2 = 0.8 against NumPy (one step cannot tell the
    betas apart: bias correction makes it lr * sign(g))."""
    b1, b2, eps, wd = 0.5, 0.8, 1e-8, 0.1
    c = _config(weight_decay=wd, b1=b1, b2=b2, grad_clip_norm=None)
    c.optim.warmup_epochs = 0.0
    plan = optim.plan_steps(c, num_train_examples=25_600)
    tx, sched = optim.make_optimizer(c, plan)
    p = np.array([[1.0, -2.0], [0.5, 3.0]])
    params = {"dense": {"kernel": jnp.asarray(p, jnp.float32)}}
    state = tx.init(params)
    m = v = np.zeros_like(p)
    for t, g in enumerate((np.array([[0.3, -1.0], [2.0, 0.1]]), np.array([[-0.7, 0.4], [0.2, 1.5]])), start=1):
        updates, state = tx.update({"dense": {"kernel": jnp.asarray(g, jnp.float32)}}, state, params)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        want = -float(sched(t - 1)) * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
        np.testing.assert_allclose(updates["dense"]["kernel"], want, rtol=1e-5, err_msg=f"step {t}")
        p = p + want
        params = {"dense": {"kernel": jnp.asarray(p, jnp.float32)}}


def _norm_module_paths(model, images) -> set[tuple[str, ...]]:
    """The scope paths of every LayerNorm/BatchNorm/GroupNorm instance of ``model``,
    found by type while it initialises (independent of how the layers are named)."""
    import flax.linen as nn

    found = set()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.LayerNorm, nn.BatchNorm, nn.GroupNorm)):
            found.add(tuple(context.module.scope.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    return found


@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_weight_decay_rules_on_a_segmentation_model(head):
    """Each rule's mask on a real UperNet / Semantic FPN parameter tree, against rules
    written here: 'all_but_norms' decays every leaf not inside a normalisation layer
    (found by type), 'kernels' only the >= 2-D 'kernel' leaves, 'all' everything."""
    from configs.seg_common import get_seg_config
    from dmformer_jax.tasks import get_task

    class Info:
        num_classes = 7

    c = get_seg_config(head, "dmformer_tiny_test")
    c.model.channels, c.model.aux_channels = 16, 8
    model = get_task(c).build_model(c, Info())
    images = jnp.zeros((1, 64, 64, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images))["params"]
    norms = _norm_module_paths(model, images)
    leaves = [(tuple(k.key for k in path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]]
    in_norm = {path: path[:-1] in norms for path, _ in leaves}
    # The model has LayerNorms and BatchNorms in the backbone and (UperNet) the heads.
    assert any(p[0] == "backbone" and p[-2].startswith("bn") for p in in_norm if in_norm[p])
    assert any(p[0] == "backbone" and p[-2].startswith("norm") for p in in_norm if in_norm[p])
    assert sum(in_norm.values()) >= 20 and sum(not v for v in in_norm.values()) >= 20

    def flat(mask):
        return {tuple(k.key for k in path): bool(m) for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]}

    assert flat(optim.weight_decay_mask(shapes, "all_but_norms")) == {p: not v for p, v in in_norm.items()}
    assert flat(optim.weight_decay_mask(shapes, "kernels")) == {p: p[-1] == "kernel" and leaf.ndim > 1
                                                               for p, leaf in leaves}
    assert all(flat(optim.weight_decay_mask(shapes, "all")).values())
    # What distinguishes the UperNet rule from the classification one: conv biases and
    # layer scale are decayed, norm scales/biases never.
    but_norms = flat(optim.weight_decay_mask(shapes, "all_but_norms"))
    assert any(v for p, v in but_norms.items() if p[-1] == "bias" and p[-2] == "conv")
    assert any(v for p, v in but_norms.items() if p[-1] == "gamma")


def test_config_chooses_the_rule_and_classification_keeps_kernels_only():
    from configs import ade20k_fpn_dmformer_t, ade20k_upernet_dmformer_t, digits, dmformer_s, seg_default

    rules = {m.__name__: optim.decay_rule(m.get_config())
             for m in (ade20k_fpn_dmformer_t, ade20k_upernet_dmformer_t, digits, dmformer_s, seg_default)}
    assert rules == {"configs.ade20k_fpn_dmformer_t": "all", "configs.ade20k_upernet_dmformer_t": "all_but_norms",
                     "configs.digits": "kernels", "configs.dmformer_s": "kernels", "configs.seg_default": "kernels"}
