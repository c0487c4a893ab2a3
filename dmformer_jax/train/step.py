"""The jitted train and eval steps (data parallel over a `jax.sharding.Mesh`)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

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


def _train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
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
    images, labels = batch["image"], batch["label"]
    if mean is not None:
        images = normalize_images(images, mean, std)

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            rngs={"drop_path": rng},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy(logits, labels).mean()
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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

    top1 = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))
    metrics = {
        "loss": loss,
        "top1": top1.astype(jnp.float32),
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

    ``batch``: ``image`` ``(B, S, S, 3)`` float32 (normalised), or uint8 pixels that
    are normalised on the device with ``mean``/``std`` (`normalize_images`), and ``label`` ``(B, num_classes)``
    soft targets, both sharded over the mesh's ``'data'`` axis. ``metrics``: scalars
    ``loss``, ``top1`` (argmax of the soft label), ``lr``, ``grad_norm`` (before
    clipping), replicated.
    """

    def step(state, batch):
        return _train_step(
            state, batch, model=model, tx=tx, schedule=schedule,
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
    model: nn.Module, mesh: Mesh, state_sharding: Any, *, use_ema: bool, mean=None, std=None
) -> Callable[[TrainState, dict[str, jax.Array]], Metrics]:
    """``eval(state, batch) -> sums`` over the real (``mask``-ed) examples of a batch.

    ``batch``: ``image`` ``(B, S, S, 3)`` (uint8 is normalised as in
    `make_train_step`), ``label`` int ``(B,)``, ``mask`` bool
    ``(B,)``. Returns replicated float32 scalars ``top1``, ``top5`` (correct counts),
    ``loss`` (summed cross-entropy) and ``count``.
    """

    def step(state: TrainState, batch):
        params = state.ema_params if use_ema else state.params
        images = batch["image"] if mean is None else normalize_images(batch["image"], mean, std)
        logits = model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=False)
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        k = min(5, logits.shape[-1])
        _, top_k = jax.lax.top_k(logits, k)
        hit_k = jnp.any(top_k == labels[:, None], axis=-1)
        hit_1 = top_k[:, 0] == labels
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return {
            "top1": jnp.sum(hit_1 * mask),
            "top5": jnp.sum(hit_k * mask),
            "loss": jnp.sum(loss * mask),
            "count": jnp.sum(mask),
        }

    data = mesh_lib.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(state_sharding, data), out_shardings=mesh_lib.replicated(mesh))
