"""The optimizer of the recipe: AdamW, lr scaled by batch, warm-up then cosine.

``lr = base_lr × effective_batch / 1024`` with ``effective_batch = batch_size ×
grad_accum_steps``; linear warm-up from ``warmup_init_lr``, cosine decay to ``min_lr``.
Weight decay applies to conv/dense kernels only: never to biases, norm scales/offsets,
layer-scale ``gamma`` or BatchNorm parameters (as timm/PoolFormer do).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections
import optax

# Parameter leaf names that are decayed. Every other leaf (bias, scale, gamma) is not.
DECAYED_LEAF_NAMES = ("kernel",)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How long the run is, in loop steps (micro-batches) and optimizer updates."""

    total_steps: int  # loop steps, one global micro-batch each
    steps_per_epoch: float  # loop steps per pass over the training split
    total_updates: int  # optimizer updates = total_steps // grad_accum_steps
    warmup_updates: int
    peak_lr: float


def plan_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> StepPlan:
    """Turns epochs, batch size and accumulation into step counts and the peak lr."""
    accum = int(config.optim.grad_accum_steps)
    steps_per_epoch = num_train_examples / config.batch_size
    if config.num_train_steps is not None:
        total_steps = int(config.num_train_steps)
    else:
        total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))
    total_updates = max(total_steps // accum, 1)
    warmup_updates = int(round(config.optim.warmup_epochs * steps_per_epoch / accum))
    warmup_updates = min(warmup_updates, total_updates - 1) if total_updates > 1 else 0
    peak_lr = config.optim.base_lr * config.batch_size * accum / 1024
    return StepPlan(total_steps, steps_per_epoch, total_updates, max(warmup_updates, 0), peak_lr)


def learning_rate_schedule(config: ml_collections.ConfigDict, plan: StepPlan) -> optax.Schedule:
    """lr as a function of the optimizer update count (not the micro-step)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=config.optim.warmup_init_lr if plan.warmup_updates else plan.peak_lr,
        peak_value=plan.peak_lr,
        warmup_steps=plan.warmup_updates,
        # optax counts decay_steps from 0, warm-up included.
        decay_steps=max(plan.total_updates, plan.warmup_updates + 1),
        end_value=config.optim.min_lr,
    )


def weight_decay_mask(params: Any) -> Any:
    """``True`` for the leaves AdamW decays (kernels), ``False`` for the rest.

    Args:
      params: a Flax ``params`` pytree (nested dicts).

    Returns:
      a pytree of bools with the same structure.
    """

    def decayed(path, leaf) -> bool:
        name = getattr(path[-1], "key", None)
        return name in DECAYED_LEAF_NAMES and getattr(leaf, "ndim", 0) > 1

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(
    config: ml_collections.ConfigDict, plan: StepPlan
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of ``config`` and its lr schedule (for logging).

    Gradient clipping (``optim.grad_clip_norm``) acts on the accumulated gradient;
    ``optim.grad_accum_steps > 1`` wraps everything in `optax.MultiSteps`.
    """
    schedule = learning_rate_schedule(config, plan)
    parts = []
    if config.optim.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=config.optim.b1,
            b2=config.optim.b2,
            weight_decay=config.optim.weight_decay,
            mask=weight_decay_mask,
        )
    )
    tx = optax.chain(*parts) if len(parts) > 1 else parts[0]
    if config.optim.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(config.optim.grad_accum_steps))
    return tx, schedule
