"""The jitted train and eval steps (data parallel over a `jax.sharding.Mesh`).

Task-generic: the loss and the metrics come from a `dmformer_jax.tasks.Task`; these
steps own the update, gradient accumulation, EMA and input normalisation.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dmformer_jax.tasks.base import Task
from dmformer_jax.train import mesh as mesh_lib
from dmformer_jax.train.state import TrainState

Metrics = dict[str, jax.Array]


def normalize_images(images: jax.Array, mean, std) -> jax.Array:
    """uint8 pixels -> float32 ``(x / 255 - mean) / std`` on the device (the same
    arithmetic as the host's `dmformer_jax.data.augment.normalize`); float images,
    already normalised on the host, pass through unchanged."""
    if images.dtype != jnp.uint8:
        return images
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def model_rngs(task: Task, rng: jax.Array) -> dict[str, jax.Array]:
    """The model's training RNG streams (`Task.rng_names`): the step's key for the
    first (``drop_path``, unchanged from before other streams existed), keys folded
    from it (``fold_in(rng, i)``) for the others (e.g. the heads' ``dropout``)."""
    names = tuple(task.rng_names)
    return {name: rng if i == 0 else jax.random.fold_in(rng, i) for i, name in enumerate(names)}


def _train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    task: Task,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int,
    ema_decay: float | None,
    mean=None,
    std=None,
) -> tuple[TrainState, Metrics]:
    # Per-step randomness from the step number alone, so a resumed run draws the same.
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images = batch[task.input_key]
    if mean is not None:
        images = normalize_images(images, mean, std)

    def loss_fn(params):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            rngs=model_rngs(task, rng),
            mutable=["batch_stats"],
        )
        loss, task_metrics = task.loss(outputs, batch)
        return loss, (task_metrics, updates.get("batch_stats", state.batch_stats))

    (loss, (task_metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    ema_params = state.ema_params
    if ema_decay is not None:
        new_ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, params)
        if grad_accum_steps > 1:
            # Average only the parameters an optimizer update produced.
            stepped = optax.MultiSteps(tx, grad_accum_steps).has_updated(opt_state)
            new_ema = jax.tree.map(lambda n, e: jnp.where(stepped, n, e), new_ema, ema_params)
        ema_params = new_ema

    metrics = {
        "loss": loss,
        **task_metrics,
        "lr": jnp.asarray(schedule(state.step // grad_accum_steps), jnp.float32),
        "grad_norm": optax.global_norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema_params,
    )
    return new_state, metrics


def make_train_step(
    task: Task,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    state_sharding: Any,
    *,
    grad_accum_steps: int = 1,
    ema_decay: float | None = None,
    mean=None,
    std=None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]:
    """``step(state, batch) -> (state, metrics)``, jitted, ``state`` donated.

    ``batch``: the entries ``task`` needs (`Task.train_keys`), sharded over the mesh's
    ``'data'`` axis; its ``task.input_key`` entry ``(B, S, S, 3)`` is float32
    (normalised) or uint8 pixels normalised on the device with ``mean``/``std``
    (`normalize_images`). ``metrics``: replicated scalars ``loss``, the task's own
    (`Task.loss`), ``lr`` and ``grad_norm`` (before clipping).
    """

    def step(state, batch):
        return _train_step(
            state, batch, task=task, model=model, tx=tx, schedule=schedule,
            grad_accum_steps=grad_accum_steps, ema_decay=ema_decay, mean=mean, std=std,
        )

    data = mesh_lib.batch_sharded(mesh)
    return jax.jit(
        step,
        in_shardings=(state_sharding, data),
        out_shardings=(state_sharding, mesh_lib.replicated(mesh)),
        donate_argnums=(0,),
    )


def make_eval_step(
    task: Task, model: nn.Module, mesh: Mesh, state_sharding: Any, *, use_ema: bool, mean=None, std=None
) -> Callable[[TrainState, dict[str, jax.Array]], Metrics]:
    """``eval(state, batch) -> sums`` over the real (``mask``-ed) examples of a batch.

    ``batch``: the entries of `Task.eval_keys` (the input normalised as in
    `make_train_step`), with ``mask`` bool ``(B,)`` marking real examples. Returns
    the task's replicated sums (`Task.eval_sums`), computed with the EMA parameters
    when ``use_ema``.
    """

    def step(state: TrainState, batch):
        params = state.ema_params if use_ema else state.params
        images = batch[task.input_key]
        if mean is not None:
            images = normalize_images(images, mean, std)
        outputs = model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=False)
        return task.eval_sums(outputs, batch, batch["mask"].astype(jnp.float32))

    data = mesh_lib.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(state_sharding, data), out_shardings=mesh_lib.replicated(mesh))
