"""Trained DMFormer weights in research code: load, export, features, PyTorch interop.

    model, variables = dmformer_jax.load("runs/digits")          # a training workdir
    logits = model.apply(variables, images)                        # (B, num_classes)
    maps = dmformer_jax.features(model, variables, images)         # stage_0..stage_3
    dmformer_jax.export_checkpoint("runs/digits", "digits.safetensors")

`load` accepts a training workdir, its ``checkpoints`` folder, one checkpoint step
folder (``.../checkpoints/<step>``), an exported Orbax folder or an exported
``.safetensors`` file. From a training checkpoint it reads only the parameters, the
BatchNorm statistics and (when the run kept one) the EMA -- never the optimizer state
-- onto the caller's devices, whatever devices the run was trained on.

Exported files hold the inference variables plus a metadata record (`METADATA_FORMAT`):
variant, the full architecture, num_classes, image size, crop_pct, mean/std and the
training config. The ``.safetensors`` export uses the PyTorch state-dict names and
layouts of `dmformer_jax.torch_model`, so ``DMFormerTorch.load_state_dict`` reads it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dmformer_jax.errors import CheckpointError
from dmformer_jax.models import VARIANTS, DMFormer, create_model
from dmformer_jax.models.backbone import stem_hidden_width
from dmformer_jax.models.legacy import remap_v1_state_dict, remap_v1_tree
from dmformer_jax.paths import resolve
from dmformer_jax.recipe import IMAGENET_MEAN, IMAGENET_STD, eval_crop_pct

METADATA_FORMAT = "dmformer_jax.export/1"
METADATA_FILE = "dmformer.json"  # next to the Orbax item in an exported folder
VARIABLES_ITEM = "variables"
SAFETENSORS_KEY = "dmformer"  # safetensors header metadata key holding the JSON record
_JAX_ONLY_FIELDS = ("dtype", "param_dtype", "depthwise_impl", "conv_impl")

__all__ = [
    "load", "read_metadata", "export", "export_checkpoint", "features",
    "to_torch", "from_torch", "architecture_of", "model_from_metadata",
]


# ----------------------------------------------------------------------------- metadata


def architecture_of(model: DMFormer) -> dict[str, Any]:
    """The `DMFormer` fields of ``model`` as JSON-friendly values (dtypes by name)."""
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
    # Resolved (not None), so the record rebuilds the same stem whatever the default rule.
    arch["stem_hidden_width"] = stem_hidden_width(arch["widths"], arch["stem_hidden_width"])
    return arch


def _variant_name(arch: Mapping[str, Any]) -> str | None:
    """The registered variant with ``arch``'s depths and widths, if any."""
    for name, variant in VARIANTS.items():
        if list(variant.depths) == list(arch["depths"]) and list(variant.widths) == list(arch["widths"]):
            return name
    return None


def model_from_metadata(meta: Mapping[str, Any], **overrides: Any) -> DMFormer:
    """The `DMFormer` a metadata record describes (training or export format).

    ``overrides``: `DMFormer` fields to change, e.g. ``num_classes=5``,
    ``dtype=jnp.bfloat16``, ``depthwise_impl='xla'``.
    """
    arch = dict(meta["architecture"])
    arch.update(overrides)
    for key in ("dtype", "param_dtype"):
        if isinstance(arch.get(key), str):
            arch[key] = jnp.dtype(arch[key])
    # Tuples: the module is hashed (jit caches), lists are not hashable.
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
    return DMFormer(**arch)


def _export_meta_from_training(meta: Mapping[str, Any], step: int, use_ema: bool) -> dict[str, Any]:
    """Converts a training checkpoint's ``meta`` item to the export record."""
    kwargs = dict(meta["model"]["kwargs"])
    model = create_model(meta["model"]["name"], num_classes=int(meta["num_classes"]), **kwargs)
    return {
        "format": METADATA_FORMAT,
        "variant": meta["model"]["name"],
        "architecture": architecture_of(model),
        "num_classes": int(meta["num_classes"]),
        "image_size": int(meta["image_size"]),
        "eval_image_size": int(meta.get("eval_image_size", meta["image_size"])),
        "crop_pct": float(meta["crop_pct"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "dataset": meta.get("dataset"),
        "step": int(step),
        "ema": bool(use_ema and meta.get("ema", False)),
        "config": meta.get("config"),
    }


# ----------------------------------------------------------------------------- locating


@dataclasses.dataclass(frozen=True)
class _Source:
    kind: str  # 'training' | 'orbax' | 'safetensors'
    path: str
    step: int | None = None


def _locate(path: str, step: int | None) -> _Source:
    """Works out what ``path`` is; raises `CheckpointError` naming what was expected."""
    from etils import epath

    path = resolve(path)  # Orbax reads no metadata from relative paths
    p = epath.Path(path)
    if path.endswith(".safetensors"):
        if not p.exists():
            raise CheckpointError(f"{path} does not exist; pass an exported .safetensors file")
        return _Source("safetensors", os.fspath(p))
    if (p / METADATA_FILE).exists():
        return _Source("orbax", os.fspath(p))
    if (p / "state").exists() and (p / "meta").exists() and p.name.isdigit():
        if step is not None and step != int(p.name):
            raise CheckpointError(f"{path} is the checkpoint of step {p.name}, not step {step}")
        return _Source("training", os.fspath(p.parent), int(p.name))
    for root in (p / "checkpoints", p):
        if root.exists() and root.is_dir():
            steps = sorted(int(c.name) for c in root.iterdir() if c.name.isdigit() and (c / "state").exists())
            if steps:
                if step is None:
                    step = steps[-1]
                elif step not in steps:
                    raise CheckpointError(f"no checkpoint of step {step} in {root}; available: {steps}")
                return _Source("training", os.fspath(root), step)
    raise CheckpointError(
        f"{path} is neither a training workdir/checkpoint nor an exported DMFormer "
        f"({METADATA_FILE} folder or .safetensors file); check the path"
    )


def _replicated(sharding: jax.sharding.Sharding | None) -> jax.sharding.Sharding:
    """The caller's sharding, or replicated over all of this process's devices."""
    if sharding is not None:
        return sharding
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


# ----------------------------------------------------------------------------- readers


def _read_training(source: _Source, use_ema: bool, sharding) -> tuple[dict, dict]:
    """``(export_meta, variables)`` of a training checkpoint, without the optimizer state."""
    import orbax.checkpoint as ocp
    from etils import epath

    from dmformer_jax.train.checkpoint import verify_manifest

    step_dir = epath.Path(source.path) / str(source.step)
    damage = verify_manifest(step_dir)
    if damage is not None:
        raise CheckpointError(f"checkpoint {step_dir} is damaged ({damage}); load another step")
    try:
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
        with ocp.PyTreeCheckpointer() as checkpointer:
            tree_meta = checkpointer.metadata(step_dir / "state").item_metadata.tree
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {step_dir} ({str(e).splitlines()[0][:200]})") from None
    wanted = ["params", "batch_stats"]
    has_ema = isinstance(tree_meta.get("ema_params"), Mapping) and bool(tree_meta["ema_params"])
    if use_ema and has_ema:
        wanted.append("ema_params")
    # Only these subtrees are read (partial restore): the optimizer state, often 2x the
    # parameters, never leaves the disk; the saved sharding (e.g. 8 devices) is replaced
    # by the caller's.
    target = {
        k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree_meta[k])
        for k in wanted
    }
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    with ocp.PyTreeCheckpointer() as checkpointer:
        state = checkpointer.restore(
            step_dir / "state",
            args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
        )
    params = state["ema_params"] if "ema_params" in state else state["params"]
    # Checkpoints written before the backbone/heads split name their arrays the v1 way.
    variables = remap_v1_tree({"params": params, "batch_stats": state.get("batch_stats", {})})
    return _export_meta_from_training(meta, source.step, use_ema and has_ema), variables


def _read_orbax(source: _Source, sharding) -> tuple[dict, dict]:
    import orbax.checkpoint as ocp
    from etils import epath

    root = epath.Path(source.path)
    meta = json.loads((root / METADATA_FILE).read_text())
    with ocp.StandardCheckpointer() as checkpointer:
        tree_meta = checkpointer.metadata(root / VARIABLES_ITEM).item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree_meta)
        variables = checkpointer.restore(root / VARIABLES_ITEM, target)
    return meta, remap_v1_tree(dict(variables))  # v1 exports: old names


def _read_safetensors(source: _Source, sharding) -> tuple[dict, dict]:
    from safetensors import safe_open

    from dmformer_jax.convert import torch_state_dict_to_flax

    with safe_open(source.path, framework="numpy") as f:
        header = f.metadata() or {}
        if SAFETENSORS_KEY not in header:
            raise CheckpointError(
                f"{source.path} has no {SAFETENSORS_KEY!r} metadata; it was not written by "
                "dmformer_jax.export (load it with from_torch instead)"
            )
        state_dict = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header[SAFETENSORS_KEY])
    state_dict = remap_v1_state_dict(state_dict)  # v1 exports: old names
    like = jax.eval_shape(_init_fn(model_from_metadata(meta), int(meta["image_size"])))
    flat = torch_state_dict_to_flax(state_dict, like)
    variables = jax.device_put(flat, sharding)
    return meta, variables


def _init_fn(model: DMFormer, image_size: int):
    side = max(32, image_size // 32 * 32)
    return lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3), jnp.float32))


def read_metadata(path: str, *, step: int | None = None, use_ema: bool = True) -> dict[str, Any]:
    """The metadata record (`METADATA_FORMAT`) of a checkpoint or exported file.

    Keys: variant, architecture, num_classes, image_size, eval_image_size, crop_pct,
    mean, std, dataset, step, ema, config.
    """
    from etils import epath

    source = _locate(path, step)
    if source.kind == "training":
        meta = json.loads((epath.Path(source.path) / str(source.step) / "meta" / "metadata").read_text())
        return _export_meta_from_training(meta, source.step, use_ema)
    if source.kind == "orbax":
        return json.loads((epath.Path(source.path) / METADATA_FILE).read_text())
    from safetensors import safe_open

    with safe_open(source.path, framework="numpy") as f:
        return json.loads((f.metadata() or {})[SAFETENSORS_KEY])


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
) -> tuple[DMFormer, dict[str, Any]]:
    """``(model, variables)`` from a training checkpoint or an exported file.

    Args:
      path: training workdir, its ``checkpoints`` folder, a ``checkpoints/<step>``
        folder, an exported Orbax folder, or an exported ``.safetensors`` file
        (local or ``gs://``).
      step: which training checkpoint (default: the newest).
      use_ema: use the EMA parameters when the run kept them (what its evals report).
      sharding: where the arrays go (default: replicated over this process's devices;
        the devices the run was saved from do not matter).
      num_classes: a different head size (fine-tuning); the new head is initialised
        from ``seed`` and needs ``reset_head=True`` (see `dmformer_jax.models.pretrained`).
      reset_head: re-initialise the head even when its shape fits.
      **overrides: other `DMFormer` fields, e.g. ``dtype=jnp.bfloat16``.

    Returns:
      ``model`` (a `DMFormer`) and ``variables = {'params', 'batch_stats'}``, so that
      ``model.apply(variables, images)`` gives ``(B, num_classes)`` float32 logits for
      ``(B, H, W, 3)`` images normalised with the metadata's mean/std.

    Raises:
      CheckpointError: unreadable path, or weights that do not fit the model asked for.
    """
    sharding = _replicated(sharding)
    source = _locate(path, step)
    if source.kind == "training":
        meta, variables = _read_training(source, use_ema, sharding)
    elif source.kind == "orbax":
        meta, variables = _read_orbax(source, sharding)
    else:
        meta, variables = _read_safetensors(source, sharding)
    if num_classes is not None:
        overrides["num_classes"] = int(num_classes)
    model = model_from_metadata(meta, **overrides)
    if reset_head or model.num_classes != int(meta["num_classes"]):
        from dmformer_jax.models.init import init_variables
        from dmformer_jax.models.pretrained import merge_pretrained

        side = int(meta["image_size"]) // 32 * 32 or 32
        # Same compiled init as a caller's init_variables(model, key, (1, S, S, 3)) (cached).
        fresh = jax.device_put(init_variables(model, jax.random.key(seed), (1, side, side, 3)), sharding)
        variables, _ = merge_pretrained(fresh, variables, reset_head=reset_head)
    return model, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


# ----------------------------------------------------------------------------- export


def export(
    path: str,
    model: DMFormer,
    variables: Mapping[str, Any],
    *,
    image_size: int = 224,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    crop_pct: float | None = None,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Writes ``variables`` of ``model`` as a standalone file that `load` reads back.

    ``path`` ending in ``.safetensors``: one file, PyTorch state-dict names/layouts,
    the metadata record as JSON in the header. Any other ``path``: a folder holding
    an Orbax PyTree (``variables/``) and ``dmformer.json``.

    ``metadata`` (e.g. `read_metadata` of the source checkpoint) supplies the
    record's fields; the keyword arguments fill in what it lacks. An existing
    ``path`` is never overwritten (`CheckpointError`).

    Returns:
      ``path``.
    """
    from etils import epath

    path = resolve(path)
    out = epath.Path(path)
    if out.exists():
        raise CheckpointError(f"{path} already exists; export to a new path (existing files are never overwritten)")
    arch = architecture_of(model)
    variant = _variant_name(arch)
    record = {
        "format": METADATA_FORMAT,
        "variant": variant,
        "architecture": arch,
        "num_classes": int(model.num_classes),
        "image_size": int(image_size),
        "eval_image_size": int(image_size),
        "crop_pct": eval_crop_pct(crop_pct, variant),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "dataset": None,
        "step": None,
        "ema": False,
        "config": dict(config) if config is not None else None,
    }
    if metadata is not None:
        record.update({k: v for k, v in metadata.items() if k not in ("architecture", "num_classes")})
        record["format"] = METADATA_FORMAT
    inference = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import save_file

        from dmformer_jax.convert import flax_to_torch_state_dict

        state_dict = flax_to_torch_state_dict(jax.device_get(inference))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / (out.name + ".tmp")
        save_file(state_dict, os.fspath(tmp), metadata={SAFETENSORS_KEY: json.dumps(record)})
        tmp.rename(out)  # a crash never leaves a half-written file under the real name
        return path
    import orbax.checkpoint as ocp

    tmp = out.parent / (out.name + ".tmp")
    if tmp.exists():
        tmp.rmtree()
    tmp.mkdir(parents=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp / VARIABLES_ITEM, inference)
        checkpointer.wait_until_finished()
    (tmp / METADATA_FILE).write_text(json.dumps(record, indent=1))
    tmp.rename(out)
    return path


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


def to_torch(model: DMFormer, variables: Mapping[str, Any]):
    """The `dmformer_jax.torch_model.DMFormerTorch` twin of ``model`` with its weights (eval mode)."""
    import torch

    from dmformer_jax.convert import flax_to_torch_state_dict
    from dmformer_jax.torch_model import DMFormerTorch

    arch = {k: v for k, v in architecture_of(model).items() if k not in _JAX_ONLY_FIELDS}
    net = DMFormerTorch(**arch)
    state = flax_to_torch_state_dict(jax.device_get(dict(variables)), like=net.state_dict())
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return net.eval()


def from_torch(model: DMFormer, state_dict: Mapping[str, Any], *, sharding=None) -> dict[str, Any]:
    """Flax variables of ``model`` from a PyTorch ``state_dict`` (e.g. ``net.state_dict()``).

    Raises `dmformer_jax.convert.ConversionError` listing missing/unexpected/mis-shaped keys.
    """
    from dmformer_jax.convert import torch_state_dict_to_flax

    like = jax.eval_shape(_init_fn(model, 32))
    return jax.device_put(torch_state_dict_to_flax(state_dict, like), _replicated(sharding))
