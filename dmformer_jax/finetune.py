"""Start a model from pretrained weights: merge by path, report every difference.

DMFormer has no position embeddings (the token mixer is convolutional), so the same
weights serve any input resolution: only the classifier ``head`` depends on the task.
`merge_pretrained` takes every pretrained array whose path and shape match the target,
re-initialises the head only when asked (``reset_head``), and refuses anything else
with a `CheckpointError` that names the paths.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.core
import numpy as np
from flax import traverse_util

from dmformer_jax.errors import CheckpointError

HEAD_PREFIX = ("params", "head")
COLLECTIONS = ("params", "batch_stats")


@dataclasses.dataclass
class MergeReport:
    """What `merge_pretrained` did, by ``/``-joined path (e.g. ``params/head/kernel``).

    Attributes:
      loaded: paths taken from the pretrained weights.
      missing: target paths absent from the pretrained weights (kept as initialised).
      unexpected: pretrained paths absent from the target (dropped).
      reshaped: ``{path: (pretrained_shape, target_shape)}`` kept as initialised.
      reset: head paths re-initialised on request (``reset_head``).
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    reshaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=dict)
    reset: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line per category (for the run's log)."""
        reshaped = [f"{p} {a}->{b}" for p, (a, b) in self.reshaped.items()]
        lines = [f"loaded {len(self.loaded)} arrays"]
        for name, items in (("reset", self.reset), ("missing", self.missing),
                            ("unexpected", self.unexpected), ("reshaped", reshaped)):
            lines.append(f"{name}: {', '.join(items) if items else 'none'}")
        return "; ".join(lines)


def _flat(variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    tree = {c: variables[c] for c in COLLECTIONS if c in variables and variables[c]}
    return traverse_util.flatten_dict(flax.core.unfreeze(tree), keep_empty_nodes=False)


def _is_head(path: tuple[str, ...]) -> bool:
    return path[: len(HEAD_PREFIX)] == HEAD_PREFIX


def _key(path: tuple[str, ...]) -> str:
    return "/".join(path)


def merge_pretrained(
    target_variables: Mapping[str, Any],
    pretrained_variables: Mapping[str, Any],
    *,
    reset_head: bool,
    strict: bool = True,
) -> tuple[dict[str, Any], MergeReport]:
    """``target_variables`` with every matching array replaced by the pretrained one.

    Args:
      target_variables: ``{'params', 'batch_stats'}`` of the model to train (freshly
        initialised; its head and any missing arrays keep these values).
      pretrained_variables: ``{'params', 'batch_stats'}`` of the pretrained model.
      reset_head: keep the target's fresh ``params/head/*`` whatever the pretrained
        head is (needed when ``num_classes`` differs).
      strict: with True, a non-head array missing from either side is an error (a
        different architecture); with False it is only reported.

    Returns:
      ``(variables, report)``: the merged variables (target dtypes and shardings) and a
      `MergeReport`.

    Raises:
      CheckpointError: a non-head shape mismatch (another variant or width), a head
        that does not fit without ``reset_head``, or (``strict``) missing/unexpected
        non-head arrays; every offending path is named.
    """
    target, pretrained = _flat(target_variables), _flat(pretrained_variables)
    report = MergeReport()
    merged: dict[tuple[str, ...], Any] = {}
    for path, value in target.items():
        key = _key(path)
        if _is_head(path) and reset_head:
            report.reset.append(key)
            merged[path] = value
            if path in pretrained and tuple(np.shape(pretrained[path])) != tuple(value.shape):
                report.reshaped[key] = (tuple(np.shape(pretrained[path])), tuple(value.shape))
        elif path not in pretrained:
            report.missing.append(key)
            merged[path] = value
        elif tuple(np.shape(pretrained[path])) != tuple(value.shape):
            report.reshaped[key] = (tuple(np.shape(pretrained[path])), tuple(value.shape))
            merged[path] = value
        else:
            new = jnp.asarray(pretrained[path], dtype=value.dtype)
            sharding = getattr(value, "sharding", None)
            merged[path] = jax.device_put(new, sharding) if sharding is not None else new
            report.loaded.append(key)
    report.unexpected = sorted(_key(p) for p in pretrained if p not in target)

    head_problems = [p for p in [*report.reshaped, *report.missing] if _is_head(tuple(p.split("/")))]
    body_reshaped = [f"{p} {a}->{b}" for p, (a, b) in report.reshaped.items() if not _is_head(tuple(p.split("/")))]
    if body_reshaped:
        raise CheckpointError(
            f"pretrained weights are another architecture (shape mismatch outside the head "
            f"({len(body_reshaped)} arrays): "
            f"{', '.join(body_reshaped[:5])}{' ...' if len(body_reshaped) > 5 else ''}); "
            "use the config.model (name, widths, depths) the checkpoint was trained with"
        )
    if head_problems and not reset_head:
        details = [f"{p} {report.reshaped[p][0]}->{report.reshaped[p][1]}" if p in report.reshaped
                   else f"{p} (missing)" for p in head_problems]
        raise CheckpointError(
            f"the pretrained head does not fit this model ({', '.join(details)}); pass "
            "--config.reset_head=True (reset_head=True) to train a new head"
        )
    body_missing = [p for p in report.missing if not _is_head(tuple(p.split("/")))]
    body_unexpected = [p for p in report.unexpected if not _is_head(tuple(p.split("/")))]
    if strict and (body_missing or body_unexpected):
        raise CheckpointError(
            f"pretrained weights do not match this architecture (missing: "
            f"{', '.join(body_missing[:5]) or 'none'}; unexpected: {', '.join(body_unexpected[:5]) or 'none'}); "
            "use the config.model the checkpoint was trained with"
        )
    return traverse_util.unflatten_dict(merged), report


def init_state_from_pretrained(config, state: Any, log=print) -> Any:
    """A fresh `TrainState` whose params/batch_stats/EMA come from ``config.init_from``.

    Called by the trainer when ``config.init_from`` is set and the workdir has no
    checkpoint of its own. The optimizer state stays fresh (Adam moments are zeros and
    do not depend on parameter values). The merge report goes to ``log``.
    """
    from dmformer_jax import api

    sharding = jax.tree.leaves(state.params)[0].sharding
    try:
        _, pretrained = api.load(str(config.init_from), sharding=sharding)
    except CheckpointError as e:
        raise CheckpointError(f"--config.init_from={config.init_from}: {e}") from None
    variables, report = merge_pretrained(
        {"params": state.params, "batch_stats": state.batch_stats},
        pretrained,
        reset_head=bool(config.reset_head),
    )
    log(f"initialised from {config.init_from}: {report.summary()}")
    ema = None if state.ema_params is None else jax.tree.map(jnp.copy, variables["params"])
    return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}), ema_params=ema)
