"""The train step's update, EMA and eval against NumPy float64 (issue 15).

`_train_step` takes any Flax module, so these tests drive it with a linear softmax
classifier whose loss, gradient and update have a closed form in NumPy: a flipped
gradient sign, a loss that ignores its targets, a swapped EMA formula or an EMA that
moves between accumulated updates all give a different number. Seconds each (the
model compiles in well under a second).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dmformer_jax.tasks import ClassificationTask
from dmformer_jax.train import mesh as mesh_lib
from dmformer_jax.train import state as state_lib
from dmformer_jax.train import step as step_lib

K, B = 7, 8  # classes (more than 5: top-5 is not trivially 100%), batch
TASK = ClassificationTask()


class Linear(nn.Module):
    """``logits = x @ W + b`` (with the ``train`` argument the step passes)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        return nn.Dense(K, kernel_init=nn.initializers.normal(0.5))(x.reshape(x.shape[0], -1))


def _batch(seed: int, soft: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, B)
    target = np.eye(K, dtype=np.float32)[labels]
    if soft:  # label smoothing-like soft targets: every entry matters
        target = 0.8 * target + 0.2 * rng.dirichlet(np.ones(K), B).astype(np.float32)
    return {"image": rng.normal(size=(B, 2, 2, 3)).astype(np.float32), "label": target}


def _state(tx, *, ema: bool) -> state_lib.TrainState:
    params = Linear().init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))["params"]
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias too
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        rng=jax.random.key_data(jax.random.key(1)),
    )


def _np_loss_and_grads(w, b, batch):
    """Mean softmax cross-entropy of ``x @ w + b`` and its gradient, float64."""
    x = np.asarray(batch["image"], np.float64).reshape(B, -1)
    y = np.asarray(batch["label"], np.float64)
    z = x @ w + b
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    loss = -np.mean(np.sum(y * np.log(p), -1))
    dz = (p - y) / B
    return loss, x.T @ dz, dz.sum(0)


def _wb(params):
    d = params["Dense_0"]
    return np.asarray(d["kernel"], np.float64), np.asarray(d["bias"], np.float64)


def _jit_step(tx, accum, ema_decay):
    return jax.jit(lambda s, b: step_lib._train_step(
        s, b, task=TASK, model=Linear(), tx=tx, schedule=optax.constant_schedule(0.1),
        grad_accum_steps=accum, ema_decay=ema_decay))


def test_sgd_steps_follow_the_numpy_gradient_and_lower_the_loss():
    lr, wd = 0.5, 0.01
    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))  # decay reads the params
    step = _jit_step(tx, 1, None)
    state = _state(tx, ema=False)
    w, b = _wb(state.params)
    losses = []
    for i in range(4):
        batch = _batch(i, soft=True)
        loss, gw, gb = _np_loss_and_grads(w, b, batch)
        state, metrics = step(state, batch)
        assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-5)
        assert float(metrics["grad_norm"]) == pytest.approx(np.sqrt((gw**2).sum() + (gb**2).sum()), rel=1e-4)
        w, b = w - lr * (gw + wd * w), b - lr * (gb + wd * b)  # descent: against the gradient
        gw_, gb_ = _wb(state.params)
        np.testing.assert_allclose(gw_, w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(gb_, b, rtol=1e-4, atol=1e-6)
        losses.append(_np_loss_and_grads(w, b, _batch(100))[0])
    assert int(state.step) == 4
    assert state.batch_stats == {}  # a model without BatchNorm keeps none
    # The same held-out batch scores better after every small descent step.
    assert losses[-1] < losses[0]


def test_train_step_top1_and_lr_metrics():
    """top1: argmax of the logits against argmax of the targets; lr: the schedule at the
    optimizer update count (micro-step // accumulation)."""
    tx = optax.MultiSteps(optax.sgd(0.0), 2)
    schedule = lambda count: 0.1 * (count + 1.0)  # noqa: E731
    step = jax.jit(lambda s, b: step_lib._train_step(
        s, b, task=TASK, model=Linear(), tx=tx, schedule=schedule, grad_accum_steps=2, ema_decay=None))
    state = _state(tx, ema=False)
    w, b = _wb(state.params)
    tops = []
    for i in range(6):
        batch = _batch(10 + i)
        state, metrics = step(state, batch)
        x = batch["image"].reshape(B, -1).astype(np.float64)
        expected = np.mean(np.argmax(x @ w + b, -1) == np.argmax(batch["label"], -1))
        assert float(metrics["top1"]) == pytest.approx(expected), i
        assert float(metrics["lr"]) == pytest.approx(0.1 * (i // 2 + 1)), i
        tops.append(expected)
    assert len(set(tops)) > 1  # the batches differ in accuracy: the check has teeth


class NormModel(nn.Module):
    """BatchNorm (running statistics) and a dropout drawing from the 'drop_path' RNG."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.Dropout(0.5, rng_collection="drop_path")(x, deterministic=not train)
        return nn.Dense(K)(x)


def test_train_step_updates_batch_norm_statistics_in_train_mode():
    model = NormModel()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))
    stats = {"BatchNorm_0": {"mean": jnp.full((12,), 0.3), "var": jnp.full((12,), 2.0)}}
    tx = optax.sgd(0.1)
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=variables["params"], batch_stats=stats,
        opt_state=tx.init(variables["params"]), ema_params=None, rng=jax.random.key_data(jax.random.key(1)),
    )
    batch = _batch(5)
    new_state, metrics = jax.jit(lambda s, b: step_lib._train_step(
        s, b, task=TASK, model=model, tx=tx, schedule=optax.constant_schedule(0.1), grad_accum_steps=1, ema_decay=None,
    ))(state, batch)
    x = batch["image"].reshape(B, -1).astype(np.float64)
    # Flax: running = momentum * running + (1 - momentum) * batch statistic (biased variance)
    np.testing.assert_allclose(new_state.batch_stats["BatchNorm_0"]["mean"], 0.9 * 0.3 + 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new_state.batch_stats["BatchNorm_0"]["var"], 0.9 * 2.0 + 0.1 * x.var(0), rtol=1e-5)
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("accum", [1, 2])
def test_ema_matches_numpy_including_under_accumulation(accum):
    """EMA ``e <- d e + (1 - d) p`` after each optimizer update, not between micro-steps."""
    decay, lr, n = 0.6, 0.3, 6
    inner = optax.sgd(lr)
    tx = optax.MultiSteps(inner, accum) if accum > 1 else inner
    step = _jit_step(tx, accum, decay)
    state = _state(tx, ema=True)
    w, b = _wb(state.params)
    ew, eb = w.copy(), b.copy()
    acc_w, acc_b = np.zeros_like(w), np.zeros_like(b)
    for i in range(n):
        _, gw, gb = _np_loss_and_grads(w, b, _batch(i, soft=True))
        acc_w, acc_b = acc_w + gw / accum, acc_b + gb / accum
        if (i + 1) % accum == 0:  # an optimizer update: params move, then the EMA
            w, b = w - lr * acc_w, b - lr * acc_b
            acc_w, acc_b = np.zeros_like(w), np.zeros_like(b)
            ew, eb = decay * ew + (1 - decay) * w, decay * eb + (1 - decay) * b
        state, _ = step(state, _batch(i, soft=True))
        got_w, got_b = _wb(state.params)
        np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-6, err_msg=f"params after micro-step {i + 1}")
        got_ew, got_eb = _wb(state.ema_params)
        np.testing.assert_allclose(got_ew, ew, rtol=1e-4, atol=1e-6, err_msg=f"EMA after micro-step {i + 1}")
        np.testing.assert_allclose(got_eb, eb, rtol=1e-4, atol=1e-6, err_msg=f"EMA after micro-step {i + 1}")
    # The EMA really lags the parameters (so the check above can tell them apart).
    assert np.abs(ew - w).max() > 1e-3


def _eval_state(ema: bool):
    tx = optax.sgd(0.0)
    state = _state(tx, ema=ema)
    if ema:  # raw parameters and EMA give different predictions
        state = state.replace(ema_params=jax.tree.map(lambda p: -2.0 * p, state.params))
    return state


@pytest.mark.parametrize("use_ema", [True, False])
def test_eval_step_reports_the_ema_parameters_when_ema_is_on(use_ema):
    mesh = mesh_lib.make_mesh()
    state = _eval_state(ema=True)
    sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), state)
    state = jax.device_put(state, sharding)
    eval_step = step_lib.make_eval_step(TASK, Linear(), mesh, sharding, use_ema=use_ema)
    rng = np.random.default_rng(7)
    n = 2 * jax.device_count()
    x = rng.normal(size=(n, 2, 2, 3)).astype(np.float32)
    labels = rng.integers(0, K, n).astype(np.int32)
    mask = np.arange(n) < n - 3
    batch = mesh_lib.global_batch(mesh, {"image": x, "label": labels, "mask": mask})
    sums = jax.device_get(eval_step(state, batch))

    w, b = _wb(state.ema_params if use_ema else state.params)
    z = x.reshape(n, -1).astype(np.float64) @ w + b
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    order = np.argsort(-z, -1)
    top1 = np.sum((order[:, 0] == labels) * mask)
    top5 = np.sum(np.any(order[:, :5] == labels[:, None], -1) * mask)
    loss = -np.sum(logp[np.arange(n), labels] * mask)
    assert float(sums["count"]) == mask.sum()
    assert float(sums["top1"]) == top1 and float(sums["top5"]) == top5
    assert float(sums["loss"]) == pytest.approx(loss, rel=1e-5)
    # ...and the other parameter set would have given another loss.
    w2, b2 = _wb(state.params if use_ema else state.ema_params)
    z2 = x.reshape(n, -1).astype(np.float64) @ w2 + b2
    z2 = z2 - z2.max(-1, keepdims=True)
    loss2 = -np.sum((z2 - np.log(np.exp(z2).sum(-1, keepdims=True)))[np.arange(n), labels] * mask)
    assert abs(loss2 - loss) > 1e-2 * abs(loss)


def test_eval_step_uses_running_statistics_in_inference_mode():
    """BatchNorm normalises with the stored running statistics (not the batch's), and no
    dropout RNG is needed: the eval step runs the model with ``train=False``."""
    model = NormModel()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))
    rng = np.random.default_rng(3)
    mean, var = rng.normal(size=12), rng.uniform(0.5, 2.0, 12)
    stats = {"BatchNorm_0": {"mean": jnp.asarray(mean, jnp.float32), "var": jnp.asarray(var, jnp.float32)}}
    mesh = mesh_lib.make_mesh()
    tx = optax.sgd(0.0)
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=variables["params"], batch_stats=stats,
        opt_state=tx.init(variables["params"]), ema_params=None, rng=jax.random.key_data(jax.random.key(1)),
    )
    sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), state)
    state = jax.device_put(state, sharding)
    eval_step = step_lib.make_eval_step(TASK, model, mesh, sharding, use_ema=False)
    n = 2 * jax.device_count()
    x = rng.normal(size=(n, 2, 2, 3)).astype(np.float32)
    labels = rng.integers(0, K, n).astype(np.int32)
    mask = np.ones(n, bool)
    sums = jax.device_get(eval_step(state, mesh_lib.global_batch(mesh, {"image": x, "label": labels, "mask": mask})))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    h = (x.reshape(n, -1) - mean) / np.sqrt(var + 1e-5) * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"]
    z = h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    z = z - z.max(-1, keepdims=True)
    loss = -np.sum((z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(n), labels])
    assert float(sums["loss"]) == pytest.approx(loss, rel=1e-5)


def test_make_train_step_over_the_mesh_normalises_uint8_and_matches_numpy():
    """The jitted, sharded step the trainer runs: uint8 pixels normalised on the device
    with ``mean``/``std``, gradient accumulation and EMA passed through, the batch split
    over every device, the state donated, metrics replicated."""
    mesh = mesh_lib.make_mesh()
    n = 2 * jax.device_count()
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    decay, lr, accum = 0.5, 0.4, 2
    tx = optax.MultiSteps(optax.sgd(lr), accum)
    state = _state(tx, ema=True)
    sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), state)
    state = jax.device_put(state, sharding)
    step = step_lib.make_train_step(TASK, Linear(), tx, optax.constant_schedule(lr), mesh, sharding,
                                    grad_accum_steps=accum, ema_decay=decay, mean=mean, std=std)
    w, b = _wb(state.params)
    ew, eb = w.copy(), b.copy()
    acc_w, acc_b = np.zeros_like(w), np.zeros_like(b)
    rng = np.random.default_rng(11)
    for i in range(2 * accum):
        pixels = rng.integers(0, 256, (n, 2, 2, 3)).astype(np.uint8)
        labels = np.eye(K, dtype=np.float32)[rng.integers(0, K, n)]
        x = ((pixels / 255.0 - mean) / std).reshape(n, -1)
        z = x @ w + b
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        loss = -np.mean(np.sum(labels * np.log(p), -1))
        dz = (p - labels) / n
        acc_w, acc_b = acc_w + x.T @ dz / accum, acc_b + dz.sum(0) / accum
        if (i + 1) % accum == 0:
            w, b = w - lr * acc_w, b - lr * acc_b
            acc_w, acc_b = np.zeros_like(w), np.zeros_like(b)
            ew, eb = decay * ew + (1 - decay) * w, decay * eb + (1 - decay) * b
        batch = mesh_lib.global_batch(mesh, {"image": pixels, "label": labels})
        assert len(batch["image"].sharding.device_set) == jax.device_count()
        old = state
        state, metrics = step(state, batch)
        assert old.params["Dense_0"]["kernel"].is_deleted()  # donated: no second copy of the state
        assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-5), i
        assert metrics["loss"].sharding.is_fully_replicated
        assert state.params["Dense_0"]["kernel"].sharding.is_equivalent_to(mesh_lib.replicated(mesh), 2)
        np.testing.assert_allclose(_wb(state.params)[0], w, rtol=1e-4, atol=1e-6, err_msg=f"micro-step {i + 1}")
        np.testing.assert_allclose(_wb(state.ema_params)[0], ew, rtol=1e-4, atol=1e-6, err_msg=f"micro-step {i + 1}")
    assert int(state.step) == 2 * accum

    # The defaults: every micro-step is an update (the schedule advances each step), no EMA.
    plain = optax.sgd(lr)
    state = _state(plain, ema=False)
    sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), state)
    state = jax.device_put(state, sharding)
    w0 = _wb(state.params)[0]
    step = step_lib.make_train_step(TASK, Linear(), plain, lambda count: 0.1 * (count + 1.0), mesh, sharding)
    batch = mesh_lib.global_batch(mesh, {"image": x.reshape(n, 2, 2, 3).astype(np.float32), "label": labels})
    lrs = []
    for _ in range(2):
        state, metrics = step(state, batch)
        lrs.append(float(metrics["lr"]))
    assert lrs == pytest.approx([0.1, 0.2])
    assert state.ema_params is None and int(state.step) == 2
    assert np.abs(_wb(state.params)[0] - w0).max() > 1e-4  # updated at the first micro-step


@pytest.mark.parametrize("ema_decay", [0.5, None])
def test_the_trainers_eval_reports_the_ema_parameters_when_ema_is_on(ema_decay):
    """The loop's wiring (`loop.make_eval_step`, used by the Trainer's evals and by
    eval-only runs): with ``optim.ema_decay`` set, the reported loss is the EMA
    parameters'; without it, the raw parameters'."""
    import train_synthetic as syn
    from dmformer_jax.train import loop
    from dmformer_jax.train import optim

    config = syn.tiny_config(**{"optim.ema_decay": ema_decay})
    mesh = mesh_lib.make_mesh()
    state = _eval_state(ema=True)
    if ema_decay is None:
        state = state.replace(ema_params=None)
    sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), state)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sharding)
    tx = optax.sgd(0.0)
    setup = loop._Setup(Linear(), tx, optax.constant_schedule(0.0), optim.plan_steps(config, syn.NUM_TRAIN),
                        mesh, abstract, K)
    trainer = loop.Trainer(config, "unused", task=TASK, data=None, info=None, setup=setup, saver=None,
                           state=state, start=0)
    n = 2 * jax.device_count()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 2, 2, 3)).astype(np.float32)
    labels = rng.integers(0, K, n).astype(np.int32)
    batch = mesh_lib.global_batch(mesh, {"image": x, "label": labels, "mask": np.ones(n, bool)})
    sums = jax.device_get(trainer.eval_step(jax.device_put(state, sharding), batch))

    def loss(params):
        w, b = _wb(params)
        z = x.reshape(n, -1).astype(np.float64) @ w + b
        z = z - z.max(-1, keepdims=True)
        return -np.sum((z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(n), labels])

    expected = loss(state.ema_params if ema_decay is not None else state.params)
    assert float(sums["loss"]) == pytest.approx(expected, rel=1e-5)
    if ema_decay is not None:
        assert abs(loss(state.params) - expected) > 1e-2 * abs(expected)
