"""The optimizer of the recipe: AdamW, lr scaled by batch, warm-up then cosine or poly.

``lr = base_lr × effective_batch / optim.lr_reference_batch`` (1024; None: ``base_lr``
is the lr itself) with ``effective_batch = batch_size × grad_accum_steps``.

``optim.schedule``:

* ``'cosine'`` (default, the ImageNet recipe): linear warm-up from ``warmup_init_lr``,
  cosine decay to ``min_lr``.
* ``'poly'`` (mmcv's ``PolyLrUpdaterHook``, the segmentation recipes):
  ``(peak - min_lr) × (1 - t / T) ** poly_power + min_lr`` over the T updates, times
  mmcv's linear warm-up factor ``1 - (1 - t / W) × (1 - warmup_ratio)`` for t < W.

Warm-up length: ``optim.warmup_steps`` optimizer updates when set, else
``warmup_epochs`` epochs.

Which parameters AdamW decays, ``optim.weight_decay_params`` (`DECAY_RULES`):

* ``'kernels'`` (default, the ImageNet recipe): conv/dense kernels only; never
  biases, norm scales/offsets, layer-scale ``gamma`` or BatchNorm parameters (as
  timm/PoolFormer do).
* ``'all_but_norms'`` (UperNet, Swin's mmseg config ``paramwise_cfg``: ``norm``
  decay_mult 0): every parameter except the scale and bias of the normalisation
  layers (LayerNorm and BatchNorm, `is_norm_param`); conv biases and layer scale
  are decayed.
* ``'all'`` (Semantic FPN, PoolFormer's sem_fpn config): every parameter.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Parameter leaf names that 'kernels' decays. Every other leaf (bias, scale, gamma) is not.
DECAYED_LEAF_NAMES = ("kernel",)
# optim.weight_decay_params values (see the module docstring).
DECAY_RULES = ("kernels", "all_but_norms", "all")
# The names the models give their normalisation layers (dmformer_jax/models/layers.py's
# layer_norm / batch_norm): LayerNorm `norm`, `norm1`, `norm_stage_1`, BatchNorm `bn`, `bn1`.
NORM_MODULE = re.compile(r"(norm|bn)(\d+|_\w+)?")


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
    if config.optim.get("warmup_steps") is not None:
        warmup_updates = int(config.optim.warmup_steps)
    else:
        warmup_updates = int(round(config.optim.warmup_epochs * steps_per_epoch / accum))
    warmup_updates = min(warmup_updates, total_updates - 1) if total_updates > 1 else 0
    reference = config.optim.get("lr_reference_batch", 1024)
    peak_lr = config.optim.base_lr * (config.batch_size * accum / reference if reference else 1.0)
    return StepPlan(total_steps, steps_per_epoch, total_updates, max(warmup_updates, 0), peak_lr)


def learning_rate_schedule(config: ml_collections.ConfigDict, plan: StepPlan) -> optax.Schedule:
    """lr as a function of the optimizer update count (not the micro-step).

    Raises:
      ConfigError: an unknown ``optim.schedule``.
    """
    kind = config.optim.get("schedule", "cosine")
    if kind == "poly":
        return poly_schedule(
            plan.peak_lr, plan.total_updates, power=float(config.optim.get("poly_power", 1.0)),
            end_value=float(config.optim.min_lr), warmup_steps=plan.warmup_updates,
            warmup_ratio=float(config.optim.get("warmup_ratio", 1e-6)),
        )
    if kind != "cosine":
        from dmformer_jax.errors import ConfigError

        raise ConfigError(f"config.optim.schedule={kind!r} is not one of ['cosine', 'poly']")
    return optax.warmup_cosine_decay_schedule(
        init_value=config.optim.warmup_init_lr if plan.warmup_updates else plan.peak_lr,
        peak_value=plan.peak_lr,
        warmup_steps=plan.warmup_updates,
        # optax counts decay_steps from 0, warm-up included.
        decay_steps=max(plan.total_updates, plan.warmup_updates + 1),
        end_value=config.optim.min_lr,
    )


def poly_schedule(
    peak: float, total: int, *, power: float, end_value: float = 0.0, warmup_steps: int = 0,
    warmup_ratio: float = 1e-6,
) -> optax.Schedule:
    """mmcv's poly decay with its linear warm-up (``PolyLrUpdaterHook``, ``warmup='linear'``):
    ``poly(t) = (peak - end_value) × (1 - t / total) ** power + end_value`` and, for
    ``t < warmup_steps``, ``poly(t) × (1 - (1 - t / warmup_steps) × (1 - warmup_ratio))``."""
    total = max(int(total), 1)

    def schedule(count):
        t = jnp.minimum(jnp.asarray(count, jnp.float32), total)
        lr = (peak - end_value) * (1.0 - t / total) ** power + end_value
        if warmup_steps:
            # = 1 - (1 - t/W)(1 - ratio), written so float32 keeps ratio exact at t = 0
            factor = warmup_ratio + (1.0 - warmup_ratio) * (t / warmup_steps)
            lr = jnp.where(t < warmup_steps, lr * factor, lr)
        return lr

    return schedule


def _keys(path) -> list[str]:
    return [str(getattr(p, "key", getattr(p, "name", p))) for p in path]


def is_norm_param(path) -> bool:
    """Whether the leaf at ``path`` (a pytree key path) is the ``scale`` or ``bias`` of
    a normalisation layer (its module's name matches `NORM_MODULE`)."""
    keys = _keys(path)
    return len(keys) >= 2 and keys[-1] in ("scale", "bias") and NORM_MODULE.fullmatch(keys[-2]) is not None


def weight_decay_mask(params: Any, rule: str = "kernels") -> Any:
    """``True`` for the leaves AdamW decays under ``rule`` (`DECAY_RULES`), ``False``
    for the rest.

    Args:
      params: a Flax ``params`` pytree (nested dicts).
      rule: ``'kernels'`` (conv/dense kernels, ndim > 1), ``'all_but_norms'`` (every
        leaf but `is_norm_param` ones) or ``'all'``.

    Returns:
      a pytree of bools with the same structure.
    """
    if rule not in DECAY_RULES:
        raise ValueError(f"weight decay rule {rule!r} is not one of {DECAY_RULES}")

    def decayed(path, leaf) -> bool:
        if rule == "all":
            return True
        if rule == "all_but_norms":
            return not is_norm_param(path)
        return _keys(path)[-1] in DECAYED_LEAF_NAMES and getattr(leaf, "ndim", 0) > 1

    return jax.tree_util.tree_map_with_path(decayed, params)


def decay_rule(config: ml_collections.ConfigDict) -> str:
    """``config.optim.weight_decay_params``; configs saved before it existed mean
    ``'all'`` with their ``optim.decay_all_params=True``, else ``'kernels'``.

    Raises:
      ConfigError: a value not in `DECAY_RULES`.
    """
    rule = config.optim.get("weight_decay_params")
    if rule is None:
        rule = "all" if config.optim.get("decay_all_params", False) else "kernels"
    if rule not in DECAY_RULES:
        from dmformer_jax.errors import ConfigError

        raise ConfigError(f"config.optim.weight_decay_params={rule!r} is not one of {list(DECAY_RULES)}")
    return str(rule)


def make_optimizer(
    config: ml_collections.ConfigDict, plan: StepPlan
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of ``config`` and its lr schedule (for logging).

    Gradient clipping (``optim.grad_clip_norm``) acts on the accumulated gradient;
    ``optim.grad_accum_steps > 1`` wraps everything in `optax.MultiSteps`.
    """
    schedule = learning_rate_schedule(config, plan)
    rule = decay_rule(config)
    parts = []
    if config.optim.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=config.optim.b1,
            b2=config.optim.b2,
            weight_decay=config.optim.weight_decay,
            # 'all' passes no mask: the optimizer state keeps the structure it had
            # when this was `optim.decay_all_params=True`.
            mask=None if rule == "all" else functools.partial(weight_decay_mask, rule=rule),
        )
    )
    tx = optax.chain(*parts) if len(parts) > 1 else parts[0]
    if config.optim.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(config.optim.grad_accum_steps))
    return tx, schedule
