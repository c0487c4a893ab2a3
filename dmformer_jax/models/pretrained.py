"""Start a model from pretrained weights: merge by path, report every difference.

Pure tree functions (no I/O, no imports from api/train/data), shared by
`dmformer_jax.api.load` and the trainer's ``--config.init_from``.

A pretrained classifier holds ``{collection}/backbone/...`` and ``{collection}/head/...``
(`dmformer_jax.models.DMFormer`; v1 files are remapped first,
`dmformer_jax.models.legacy`). `merge_pretrained` loads its backbone into any target
that holds a `Backbone` under ``prefix`` (``('backbone',)`` for a classifier or a
segmentation model), so ``params/decode_head/...`` of a dense model simply stays at
init, and so do its backbone's output norms ``norm_stage_i`` (reported as missing, never
a ``strict`` failure; `DENSE_ONLY_PREFIX`). The classifier head:

* loads into a target that has a ``head`` too (classifier fine-tuning), except its
  ``fc`` when ``reset_head`` (as timm's ``reset_classifier``: the classes change,
  the pooled-feature LayerNorm ``head/norm`` does not);
* is ignored on purpose, and listed as such, by a target without a ``head``.

DMFormer has no position embeddings (the token mixer is convolutional), so the same
weights serve any input resolution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.core
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dmformer_jax.errors import CheckpointError
from dmformer_jax.models.legacy import remap_v1_tree

COLLECTIONS = ("params", "batch_stats")
BACKBONE = "backbone"
HEAD = "head"
CLASSIFIER = (HEAD, "fc")  # the only head part whose shape depends on num_classes
# Backbone parts that only dense-prediction models have (`Backbone(out_norms=True)`):
# absent from a classifier's checkpoint by design, so never a strict failure.
DENSE_ONLY_PREFIX = "norm_stage_"

Path = tuple[str, ...]


@dataclasses.dataclass
class MergeReport:
    """What `merge_pretrained` did, by ``/``-joined target path (e.g. ``params/head/fc/kernel``).

    Attributes:
      loaded: target paths taken from the pretrained weights.
      missing: target paths absent from the pretrained weights (kept as initialised;
        e.g. a segmentation model's ``decode_head``).
      unexpected: pretrained paths (their own names) with no place in the target (dropped).
      reshaped: ``{path: (pretrained_shape, target_shape)}`` kept as initialised.
      reset: classifier paths re-initialised on request (``reset_head``).
      ignored: pretrained classifier-head paths dropped on purpose (the target has no head).
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    reshaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=dict)
    reset: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One clause per category, ``;``-separated (for the run's log)."""
        reshaped = [f"{p} {a}->{b}" for p, (a, b) in self.reshaped.items()]
        lines = [f"loaded {len(self.loaded)} arrays"]
        for name, items in (("reset", self.reset), ("missing", self.missing),
                            ("unexpected", self.unexpected), ("reshaped", reshaped)):
            lines.append(f"{name}: {', '.join(items) if items else 'none'}")
        if self.ignored:
            lines.append(f"ignored on purpose (classifier head; this model has none): {', '.join(self.ignored)}")
        return "; ".join(lines)


def _flat(variables: Mapping[str, Any]) -> dict[Path, Any]:
    tree = {c: variables[c] for c in COLLECTIONS if c in variables and variables[c]}
    return traverse_util.flatten_dict(flax.core.unfreeze(tree), keep_empty_nodes=False)


def _key(path: Path) -> str:
    return "/".join(path)


def _under(path: Path, prefix: Sequence[str]) -> bool:
    """Whether ``(collection, *rest)`` has ``rest`` starting with ``prefix``."""
    return tuple(path[1 : 1 + len(prefix)]) == tuple(prefix)


def _destinations(pretrained: Mapping[Path, Any], target: Mapping[Path, Any], prefix: Path):
    """``(sources, unexpected, ignored)``: target path -> pretrained array, and the
    pretrained paths that have no place in the target."""
    target_has_head = any(_under(p, (HEAD,)) for p in target)
    sources: dict[Path, Any] = {}
    unexpected, ignored = [], []
    for path, value in pretrained.items():
        collection, rest = path[0], path[1:]
        if rest[:1] == (BACKBONE,):
            dest = (collection, *prefix, *rest[1:])
        elif rest[:1] == (HEAD,) and not target_has_head:
            ignored.append(_key(path))
            continue
        else:
            dest = path
        if dest in target:
            sources[dest] = value
        else:
            unexpected.append(_key(path))
    return sources, sorted(unexpected), sorted(ignored)


def merge_pretrained(
    target_variables: Mapping[str, Any],
    pretrained_variables: Mapping[str, Any],
    *,
    reset_head: bool = False,
    strict: bool = True,
    prefix: Sequence[str] = (BACKBONE,),
) -> tuple[dict[str, Any], MergeReport]:
    """``target_variables`` with every matching array replaced by the pretrained one.

    Args:
      target_variables: ``{'params', 'batch_stats'}`` of the model to train (freshly
        initialised; what is not loaded keeps these values).
      pretrained_variables: ``{'params', 'batch_stats'}`` of a pretrained DMFormer
        classifier (today's layout or v1).
      reset_head: keep the target's fresh ``params/head/fc/*`` whatever the pretrained
        one is (needed when ``num_classes`` differs).
      strict: with True, a backbone array missing from either side is an error (a
        different architecture); with False it is only reported.
      prefix: where the target holds its `Backbone` inside each collection.

    Returns:
      ``(variables, report)``: the merged variables (target dtypes and shardings) and a
      `MergeReport`.

    Raises:
      CheckpointError: a shape mismatch outside the classifier (another variant or
        width), a classifier that does not fit without ``reset_head``, or (``strict``)
        missing/unexpected backbone arrays; every offending path is named.
    """
    prefix = tuple(prefix)
    target = _flat(target_variables)
    pretrained = _flat(remap_v1_tree(flax.core.unfreeze(dict(pretrained_variables))))
    sources, unexpected, ignored = _destinations(pretrained, target, prefix)
    report = MergeReport(unexpected=unexpected, ignored=ignored)
    merged: dict[Path, Any] = {}
    for path, value in target.items():
        key = _key(path)
        source = sources.get(path)
        if source is not None and tuple(np.shape(source)) != tuple(value.shape):
            report.reshaped[key] = (tuple(np.shape(source)), tuple(value.shape))
        if reset_head and _under(path, CLASSIFIER):
            report.reset.append(key)
            merged[path] = value
        elif source is None:
            report.missing.append(key)
            merged[path] = value
        elif key in report.reshaped:
            merged[path] = value
        else:
            new = jnp.asarray(source, dtype=value.dtype)
            sharding = getattr(value, "sharding", None)
            merged[path] = jax.device_put(new, sharding) if sharding is not None else new
            report.loaded.append(key)

    def is_head(key: str) -> bool:
        return _under(tuple(key.split("/")), (HEAD,))

    def is_classifier(key: str) -> bool:
        return _under(tuple(key.split("/")), CLASSIFIER)

    body_reshaped = [f"{p} {a}->{b}" for p, (a, b) in report.reshaped.items() if not is_classifier(p)]
    if body_reshaped:
        raise CheckpointError(
            f"pretrained weights are another architecture (shape mismatch outside the head "
            f"({len(body_reshaped)} arrays): "
            f"{', '.join(body_reshaped[:5])}{' ...' if len(body_reshaped) > 5 else ''}); "
            "use the config.model (name, widths, depths) the checkpoint was trained with"
        )
    head_problems = [p for p in [*report.reshaped, *report.missing] if is_head(p) and p not in report.reset]
    if head_problems:
        details = [f"{p} {report.reshaped[p][0]}->{report.reshaped[p][1]}" if p in report.reshaped
                   else f"{p} (missing)" for p in head_problems]
        raise CheckpointError(
            f"the pretrained head does not fit this model ({', '.join(details)}); pass "
            "--config.reset_head=True (reset_head=True) to train a new head"
        )
    if any(_under(p, (BACKBONE,)) for p in pretrained) and not any(_under(p, prefix) for p in target):
        raise CheckpointError(
            f"this model holds nothing under {'/'.join(prefix)!r}, so the pretrained backbone has "
            "nowhere to go; pass prefix= where the model holds its Backbone"
        )
    def is_dense_only(key: str, where: Sequence[str]) -> bool:
        parts = tuple(key.split("/"))
        return (_under(parts, where) and len(parts) > 1 + len(where)
                and parts[1 + len(where)].startswith(DENSE_ONLY_PREFIX))

    body_missing = [p for p in report.missing
                    if _under(tuple(p.split("/")), prefix) and not is_dense_only(p, prefix)]
    body_unexpected = [p for p in report.unexpected if not is_head(p) and not is_dense_only(p, (BACKBONE,))]
    if strict and (body_missing or body_unexpected):
        raise CheckpointError(
            f"pretrained weights do not match this architecture (missing: "
            f"{', '.join(body_missing[:5]) or 'none'}; unexpected: {', '.join(body_unexpected[:5]) or 'none'}); "
            "use the config.model the checkpoint was trained with"
        )
    return traverse_util.unflatten_dict(merged), report
