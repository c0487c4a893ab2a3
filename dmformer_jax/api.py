"""Trained DMFormer weights in research code: load, export, features, PyTorch interop.

    model, variables = dmformer_jax.load("runs/digits")          # a training workdir
    logits = model.apply(variables, images)                        # (B, num_classes)
    maps = dmformer_jax.features(model, variables, images)         # stage_0..stage_3
    classes = dmformer_jax.segment(seg_model, seg_variables, image, meta)  # segmentation: int32 (H, W)
    dmformer_jax.export_checkpoint("runs/digits", "digits.safetensors")

`load` accepts a training workdir, its ``checkpoints`` folder, one checkpoint step
folder (``.../checkpoints/<step>``), an exported Orbax folder or an exported
``.safetensors`` file. From a training checkpoint it reads only the parameters, the
BatchNorm statistics and (when the run kept one) the EMA -- never the optimizer state
-- onto the caller's devices, whatever devices the run was trained on.

Exported files hold the inference variables plus the metadata record (schema v2,
`dmformer_jax.checkpoint.metadata`):
variant, the full architecture, num_classes, image size, crop_pct, mean/std and the
training config. The ``.safetensors`` export uses the PyTorch state-dict names and
layouts of `dmformer_jax.torch_model`, so ``DMFormerTorch.load_state_dict`` reads it.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dmformer_jax.checkpoint import layout
from dmformer_jax.checkpoint import metadata as metadata_lib
from dmformer_jax.checkpoint.export import write_export
from dmformer_jax.checkpoint.metadata import architecture_of, model_from_metadata
from dmformer_jax.checkpoint.variables import init_fn, read_variables, replicated
from dmformer_jax.checkpoint.variables import read_metadata as _read_record
from dmformer_jax.errors import CheckpointError
from dmformer_jax.models import DMFormer, DMFormerSegmentation
from dmformer_jax.recipe import IMAGENET_MEAN, IMAGENET_STD, eval_crop_pct
_JAX_ONLY_FIELDS = ("dtype", "param_dtype", "depthwise_impl", "conv_impl")

__all__ = [
    "load", "read_metadata", "export", "export_checkpoint", "features", "segment",
    "to_torch", "from_torch", "architecture_of", "model_from_metadata",
]


def read_metadata(path: str, *, step: int | None = None, use_ema: bool = True) -> dict[str, Any]:
    """The metadata record (schema v2, `dmformer_jax.checkpoint.metadata`) of a checkpoint or export.

    Keys: format, task, variant, architecture, num_classes, dataset, image_size,
    eval_image_size, crop_pct, mean, std, step, ema, config. Older records are upgraded.
    """
    return _read_record(layout.locate(path, step), use_ema=use_ema)


def load(
    path: str,
    *,
    step: int | None = None,
    use_ema: bool = True,
    sharding: jax.sharding.Sharding | None = None,
    num_classes: int | None = None,
    reset_head: bool = False,
    seed: int = 0,
    **overrides: Any,
) -> tuple[DMFormer | DMFormerSegmentation, dict[str, Any]]:
    """``(model, variables)`` from a training checkpoint or an exported file, of either task.

    Args:
      path: training workdir, its ``checkpoints`` folder, a ``checkpoints/<step>``
        folder, an exported Orbax folder, or an exported ``.safetensors`` file
        (local or ``gs://``).
      step: which training checkpoint (default: the newest).
      use_ema: use the EMA parameters when the run kept them (what its evals report).
      sharding: where the arrays go (default: replicated over this process's devices;
        the devices the run was saved from do not matter).
      num_classes: a different head size (fine-tuning a classifier); the new head is
        initialised from ``seed`` and needs ``reset_head=True`` (see
        `dmformer_jax.models.pretrained`).
      reset_head: re-initialise the classifier head even when its shape fits.
      **overrides: other fields of the model, e.g. ``dtype=jnp.bfloat16``.

    Returns:
      ``model`` and ``variables = {'params', 'batch_stats'}``. For a classification
      checkpoint the model is a `DMFormer`: ``model.apply(variables, images)`` gives
      ``(B, num_classes)`` float32 logits for ``(B, H, W, 3)`` images normalised with
      the metadata's mean/std. For a segmentation checkpoint (metadata ``task``
      ``'segmentation'``) it is a `DMFormerSegmentation`: ``model.apply(variables,
      images)`` gives ``(B, H/4, W/4, num_classes)`` logits (sides divisible by 32);
      `segment` gives class maps at the images' own sizes.

    Raises:
      CheckpointError: unreadable path, weights that do not fit the model asked for, or
        ``num_classes``/``reset_head`` for a segmentation checkpoint.
    """
    sharding = replicated(sharding)
    meta, variables = read_variables(layout.locate(path, step), use_ema=use_ema, sharding=sharding)
    if meta.get("task") == "segmentation" and (num_classes is not None or reset_head):
        raise CheckpointError(
            f"{path} is a segmentation checkpoint: num_classes/reset_head re-size a classifier's head; "
            "load it as saved (fine-tune a segmentation model with train.py --config.init_from)"
        )
    if num_classes is not None:
        overrides["num_classes"] = int(num_classes)
    model = model_from_metadata(meta, **overrides)
    if reset_head or model.num_classes != int(meta["num_classes"]):
        from dmformer_jax.models.pretrained import merge_pretrained
        from dmformer_jax.models.init import init_variables

        side = int(meta["image_size"]) // 32 * 32 or 32
        # Same compiled init as a caller's init_variables(model, key, (1, S, S, 3)) (cached).
        fresh = jax.device_put(init_variables(model, jax.random.key(seed), (1, side, side, 3)), sharding)
        variables, _ = merge_pretrained(fresh, variables, reset_head=reset_head)
    return model, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


# ----------------------------------------------------------------------------- export


def export(
    path: str,
    model: DMFormer | DMFormerSegmentation,
    variables: Mapping[str, Any],
    *,
    image_size: int = 224,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    crop_pct: float | None = None,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Writes ``variables`` of ``model`` (a classifier or a segmentation model) as a
    standalone file that `load` reads back.

    ``path`` ending in ``.safetensors``: one file, PyTorch state-dict names/layouts,
    the metadata record as JSON in the header. Any other ``path``: a folder holding
    an Orbax PyTree (``variables/``) and ``dmformer.json``.

    ``metadata`` (e.g. `read_metadata` of the source checkpoint) supplies the
    record's fields; the keyword arguments fill in what it lacks. An existing
    ``path`` is never overwritten (`CheckpointError`).

    Returns:
      ``path``.
    """
    crop_pct = eval_crop_pct(crop_pct, metadata_lib.variant_name(architecture_of(model)))
    record = metadata_lib.record(model, image_size=image_size, crop_pct=crop_pct, mean=mean, std=std,
                                 config=config)
    if metadata is not None:
        source = metadata_lib.upgrade(metadata) if "format" in metadata else dict(metadata)
        keep = {k: v for k, v in source.items() if k not in ("architecture", "num_classes")}
        record.update(keep, format=metadata_lib.FORMAT, variant=record["variant"])
    return write_export(path, variables, record)


def export_checkpoint(
    checkpoint: str, path: str, *, step: int | None = None, use_ema: bool = True
) -> str:
    """`export` of a training checkpoint (its EMA when kept), with its metadata."""
    meta = read_metadata(checkpoint, step=step, use_ema=use_ema)
    model, variables = load(checkpoint, step=step, use_ema=use_ema)
    return export(path, model, variables, metadata=meta)


# ----------------------------------------------------------------------------- use


@functools.partial(jax.jit, static_argnums=(0,))
def _features(model: DMFormer, variables, images):
    return model.apply(variables, images, train=False, method="features")


def features(model: DMFormer, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """The four stage maps of ``images`` (inference mode, jitted per model and shape).

    Args:
      images: ``(B, H, W, 3)`` normalised with the checkpoint's mean/std; sides
        divisible by 32.

    Returns:
      ``{'stage_i': (B, H/s, W/s, widths[i])}`` for strides ``s`` = 4, 8, 16, 32.
    """
    return _features(model, dict(variables), jnp.asarray(images))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _class_map(model: DMFormerSegmentation, variables, image, size: tuple[int, int]):
    from dmformer_jax.metrics.segmentation import predicted_classes

    logits = model.apply(variables, image, train=False)
    hw = image.shape[1:3]
    # The evaluation's own resize-and-argmax (one image: no padding, input = valid region).
    return predicted_classes(logits, [hw], [size], hw, size)[0]


def _eval_fields(meta: Mapping[str, Any]):
    """The run's segmentation eval settings (`SegFields`) from its record."""
    import ml_collections

    from dmformer_jax.data.segmentation import pipeline as seg_pipeline  # late: TensorFlow

    config = meta.get("config")
    if config is None:  # exported from research code without a config: the defaults at its size
        config = {"data": {"image_size": meta["image_size"], "eval_image_size": meta.get("eval_image_size")}}
    return seg_pipeline.seg_fields(ml_collections.ConfigDict(dict(config)))


def segment(
    model: DMFormerSegmentation,
    variables: Mapping[str, Any],
    images: np.ndarray | Sequence[np.ndarray],
    metadata: Mapping[str, Any],
) -> np.ndarray | list[np.ndarray]:
    """Class maps at each image's original size, exactly as the segmentation evaluation
    predicts them (the mIoU in ``metrics.jsonl`` scores these maps).

        model, variables = dmformer_jax.load("runs/seg")
        meta = dmformer_jax.read_metadata("runs/seg")
        classes = dmformer_jax.segment(model, variables, image, meta)   # int32 (H, W)

    Per image: AlignResize to the run's eval scale (short side to ``eval_scale``'s
    short side, long side at most its long side, both rounded up to multiples of
    ``eval_size_divisor``; bilinear, no antialiasing,
    `dmformer_jax.data.segmentation.pipeline.eval_input`), normalise with the record's
    mean/std, whole-image inference, the logits resized bilinearly (align_corners=False,
    no antialiasing) to the resized size and then to the original ``(H, W)`` (mmseg),
    argmax (`dmformer_jax.metrics.segmentation.predicted_classes`). Jitted per model
    and pair of sizes; images of different sizes compile separately.

    Args:
      model, variables: a segmentation `load` result (or your own `DMFormerSegmentation`).
      images: one uint8 ``(H, W, 3)`` RGB image, or a sequence of them (sizes may differ).
      metadata: the checkpoint's record (`read_metadata`): its config's eval settings
        (``data.eval_scale``, ``eval_image_size``, ``eval_size_divisor``) and mean/std.

    Returns:
      int32 ``(H, W)`` class indices for one image, a list of them for a sequence.

    Raises:
      ValueError: an image that is not uint8 ``(H, W, 3)``, or a classification record.
    """
    if metadata.get("task") != "segmentation" or not isinstance(model, DMFormerSegmentation):
        raise ValueError(f"segment needs a segmentation model and its record (got a {type(model).__name__} and a "
                         f"{metadata.get('task')!r} record); load a segmentation checkpoint")
    from dmformer_jax.data.segmentation import pipeline as seg_pipeline  # late: TensorFlow

    single = isinstance(images, (np.ndarray, jax.Array)) and np.ndim(images) == 3
    batch = [images] if single else list(images)
    fields = _eval_fields(metadata)
    variables = dict(variables)
    maps = []
    for i, image in enumerate(batch):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image {i} is {image.dtype} {image.shape}; segment takes uint8 (H, W, 3) RGB images")
        x = seg_pipeline.eval_input(image, fields, metadata["mean"], metadata["std"])
        maps.append(np.asarray(_class_map(model, variables, jnp.asarray(x[None]), image.shape[:2])))
    return maps[0] if single else maps


def to_torch(model: DMFormer, variables: Mapping[str, Any]):
    """The `dmformer_jax.torch_model.DMFormerTorch` twin of ``model`` with its weights (eval mode)."""
    import torch

    from dmformer_jax.checkpoint.convert import flax_to_torch_state_dict
    from dmformer_jax.torch_model import DMFormerTorch

    arch = {k: v for k, v in architecture_of(model).items() if k not in _JAX_ONLY_FIELDS}
    net = DMFormerTorch(**arch)
    state = flax_to_torch_state_dict(jax.device_get(dict(variables)), like=net.state_dict())
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return net.eval()


def from_torch(model: DMFormer, state_dict: Mapping[str, Any], *, sharding=None) -> dict[str, Any]:
    """Flax variables of ``model`` from a PyTorch ``state_dict`` (e.g. ``net.state_dict()``).

    Raises `dmformer_jax.checkpoint.convert.ConversionError` listing missing/unexpected/mis-shaped keys.
    """
    from dmformer_jax.checkpoint.convert import torch_state_dict_to_flax

    like = jax.eval_shape(init_fn(model, 32))
    return jax.device_put(torch_state_dict_to_flax(state_dict, like), replicated(sharding))
