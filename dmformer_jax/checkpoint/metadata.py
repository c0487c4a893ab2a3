"""The metadata record every checkpoint and export carries (schema v2).

One schema for training steps (the ``meta`` item) and exports (``dmformer.json`` or the
safetensors header)::

    format           "dmformer_jax/2"
    task             "classification" (a `DMFormer`) or "segmentation" (a
                     `DMFormerSegmentation`): which module `model_from_metadata` builds
    variant          registry name the backbone matches, or None (informational)
    architecture     every field of that module (dtypes by name): rebuilds the model
                     without the registry, so a later change to `VARIANTS` cannot
                     silently change an old checkpoint
    num_classes, dataset, image_size, eval_image_size, crop_pct, mean, std
    step, ema        for a training step: whether the run keeps EMA parameters; for an
                     export: whether the exported parameters are the EMA
    config           the run's config (JSON), or None

Older records are read through `upgrade`: ``dmformer_jax.train/1`` (variant name plus
`create_model` overrides, rebuilt through today's registry, which is all v1 stored) and
``dmformer_jax.export/1`` (already held the architecture).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax.numpy as jnp

from dmformer_jax.errors import CheckpointError
import flax.linen as nn

from dmformer_jax.models import VARIANTS, DMFormer, DMFormerSegmentation, create_model
from dmformer_jax.models.backbone import stem_hidden_width

FORMAT = "dmformer_jax/2"
TRAIN_V1 = "dmformer_jax.train/1"
EXPORT_V1 = "dmformer_jax.export/1"
DEFAULT_TASK = "classification"
# The module each task's checkpoints hold (the record's ``task`` picks it).
MODEL_CLASSES: dict[str, type[nn.Module]] = {"classification": DMFormer, "segmentation": DMFormerSegmentation}


def architecture_of(model: nn.Module) -> dict[str, Any]:
    """The fields of ``model`` (a `DMFormer`, or any task's Flax module) as JSON-friendly
    values (dtypes by name)."""
    arch: dict[str, Any] = {}
    for field in dataclasses.fields(model):
        if field.name in ("parent", "name"):
            continue
        value = getattr(model, field.name)
        if field.name in ("dtype", "param_dtype"):
            value = jnp.dtype(value).name
        elif isinstance(value, (tuple, list)):
            value = [int(v) for v in value]
        arch[field.name] = value
    if "widths" in arch and "stem_hidden_width" in arch:
        # Resolved (not None), so the record rebuilds the same stem whatever the default rule.
        arch["stem_hidden_width"] = stem_hidden_width(arch["widths"], arch["stem_hidden_width"])
    return arch


def variant_name(arch: Mapping[str, Any]) -> str | None:
    """The registered variant with ``arch``'s depths and widths, if any (informational)."""
    if "depths" not in arch or "widths" not in arch:
        return None
    for name, variant in VARIANTS.items():
        if list(variant.depths) == list(arch["depths"]) and list(variant.widths) == list(arch["widths"]):
            return name
    return None


def task_of(model: nn.Module) -> str:
    """The task whose checkpoints hold ``model``'s class (`MODEL_CLASSES`); classification otherwise."""
    for task, cls in MODEL_CLASSES.items():
        if isinstance(model, cls):
            return task
    return DEFAULT_TASK


def model_from_metadata(meta: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """The module a record describes (any schema version): a `DMFormer` for a
    classification record, a `DMFormerSegmentation` for a segmentation one.

    ``overrides``: fields to change, e.g. ``num_classes=5``,
    ``dtype=jnp.bfloat16``, ``depthwise_impl='xla'``.

    Raises:
      CheckpointError: a task or architecture field this version does not know.
    """
    meta = upgrade(meta)
    task = meta.get("task") or DEFAULT_TASK
    if task not in MODEL_CLASSES:
        raise CheckpointError(f"the checkpoint's task {task!r} has no model here (known: "
                              f"{', '.join(MODEL_CLASSES)}); upgrade dmformer_jax")
    cls = MODEL_CLASSES[task]
    arch = dict(meta["architecture"])
    arch.update(overrides)
    for key in ("dtype", "param_dtype"):
        if isinstance(arch.get(key), str):
            arch[key] = jnp.dtype(arch[key])
    # Tuples: the module is hashed (jit caches), lists are not hashable.
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise CheckpointError(f"the checkpoint's architecture has fields this version does not know: {unknown}; "
                              "upgrade dmformer_jax")
    return cls(**arch)


def record(
    model: nn.Module,
    *,
    image_size: int,
    crop_pct: float,
    mean: Sequence[float],
    std: Sequence[float],
    eval_image_size: int | None = None,
    dataset: str | None = None,
    step: int | None = None,
    ema: bool = False,
    config: Mapping[str, Any] | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """A v2 record for ``model`` (see the module docstring for the fields); ``task``
    defaults to the one ``model``'s class belongs to (`task_of`)."""
    arch = architecture_of(model)
    return {
        "format": FORMAT,
        "task": task or task_of(model),
        "variant": variant_name(arch),
        "architecture": arch,
        "num_classes": int(getattr(model, "num_classes", 0) or 0),
        "dataset": dataset,
        "image_size": int(image_size),
        "eval_image_size": int(eval_image_size or image_size),
        "crop_pct": float(crop_pct),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "step": None if step is None else int(step),
        "ema": bool(ema),
        "config": dict(config) if config is not None else None,
    }


def upgrade(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Any record as a v2 record (a copy; v2 records come back unchanged).

    Raises:
      CheckpointError: a record of an unknown format.
    """
    fmt = meta.get("format")
    if fmt == FORMAT:
        return dict(meta)
    if fmt == EXPORT_V1:
        return {**meta, "format": FORMAT, "task": meta.get("task", DEFAULT_TASK)}
    if fmt == TRAIN_V1:
        model = create_model(meta["model"]["name"], num_classes=int(meta["num_classes"]),
                             **dict(meta["model"]["kwargs"]))
        return record(
            model, image_size=meta["image_size"], eval_image_size=meta.get("eval_image_size"),
            crop_pct=meta["crop_pct"], mean=meta["mean"], std=meta["std"], dataset=meta.get("dataset"),
            step=meta.get("step"), ema=meta.get("ema", False), config=meta.get("config"),
        ) | {"variant": meta["model"]["name"]}
    raise CheckpointError(f"unknown checkpoint metadata format {fmt!r}; upgrade dmformer_jax")


def describe(meta: Mapping[str, Any]) -> str:
    """One phrase naming a record's model, e.g. ``dmformer_s, depths (2, 2, 8, 2), ..., 1000 classes``."""
    try:
        meta = upgrade(meta)
        arch = meta["architecture"]
    except Exception:  # noqa: BLE001  (a damaged or unknown record still gets a message)
        return "a model this version cannot describe"
    return (f"{meta.get('variant') or 'custom'}, depths {tuple(arch['depths'])}, widths {tuple(arch['widths'])}, "
            f"{meta['num_classes']} classes")
