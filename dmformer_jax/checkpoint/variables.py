"""Inference variables and the metadata record from any checkpoint or export.

`read_variables` reads only ``params``, ``batch_stats`` and (when the run kept them and
they are asked for) the EMA parameters: never the optimizer state, and onto the
caller's devices whatever devices the run was saved from.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax

from dmformer_jax.checkpoint import metadata
from dmformer_jax.checkpoint.layout import META, META_FILE, METADATA_FILE, SAFETENSORS_KEY, STATE, VARIABLES_ITEM, Source
from dmformer_jax.checkpoint.manifest import verify_manifest
from dmformer_jax import sharding as sharding_lib
from dmformer_jax.errors import CheckpointError, first_line
from dmformer_jax.models import DMFormer
from dmformer_jax.models.init import init_on_zeros
from dmformer_jax.models.legacy import remap_v1_state_dict, remap_v1_tree


def replicated(sharding: jax.sharding.Sharding | None = None) -> jax.sharding.Sharding:
    """The caller's sharding, or replicated over all of this process's devices."""
    return sharding if sharding is not None else sharding_lib.replicated(sharding_lib.local_mesh())


def init_fn(model: DMFormer, image_size: int):
    """A zero-argument init of ``model`` at the nearest side divisible by 32 (for eval_shape)."""
    side = max(32, image_size // 32 * 32)
    return lambda: init_on_zeros(model, jax.random.key(0), (1, side, side, 3))


def _training_record(source: Source, use_ema: bool) -> dict[str, Any]:
    raw = json.loads((source.step_dir / META / META_FILE).read_text())
    meta = metadata.upgrade(raw)
    meta["step"] = int(source.step)
    meta["ema"] = bool(use_ema and meta.get("ema", False))
    return meta


def read_metadata(source: Source, *, use_ema: bool = True) -> dict[str, Any]:
    """The v2 record of ``source`` (`dmformer_jax.checkpoint.metadata`)."""
    if source.kind == "training":
        return _training_record(source, use_ema)
    if source.kind == "orbax":
        from etils import epath

        return metadata.upgrade(json.loads((epath.Path(source.path) / METADATA_FILE).read_text()))
    from safetensors import safe_open

    with safe_open(source.path, framework="numpy") as f:
        header = f.metadata() or {}
    if SAFETENSORS_KEY not in header:
        raise CheckpointError(
            f"{source.path} has no {SAFETENSORS_KEY!r} metadata; it was not written by "
            "dmformer_jax.export (load it with from_torch instead)"
        )
    return metadata.upgrade(json.loads(header[SAFETENSORS_KEY]))


def _read_training(source: Source, use_ema: bool, sharding) -> tuple[dict, dict]:
    import orbax.checkpoint as ocp

    step_dir = source.step_dir
    damage = verify_manifest(step_dir)
    if damage is not None:
        raise CheckpointError(f"checkpoint {step_dir} is damaged ({damage}); load another step")
    try:
        meta = _training_record(source, use_ema)
        with ocp.PyTreeCheckpointer() as checkpointer:
            tree_meta = checkpointer.metadata(step_dir / STATE).item_metadata.tree
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {step_dir} ({first_line(e)})") from None
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
            step_dir / STATE,
            args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
        )
    params = state["ema_params"] if "ema_params" in state else state["params"]
    meta["ema"] = "ema_params" in state
    # Checkpoints written before the backbone/heads split name their arrays the v1 way.
    return meta, remap_v1_tree({"params": params, "batch_stats": state.get("batch_stats", {})})


def _read_orbax(source: Source, sharding) -> tuple[dict, dict]:
    import orbax.checkpoint as ocp
    from etils import epath

    meta = read_metadata(source)
    with ocp.StandardCheckpointer() as checkpointer:
        item = epath.Path(source.path) / VARIABLES_ITEM
        tree_meta = checkpointer.metadata(item).item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree_meta)
        variables = checkpointer.restore(item, target)
    return meta, remap_v1_tree(dict(variables))  # v1 exports: old names


def _read_safetensors(source: Source, sharding) -> tuple[dict, dict]:
    from safetensors import safe_open

    from dmformer_jax.checkpoint.convert import torch_state_dict_to_flax

    meta = read_metadata(source)
    with safe_open(source.path, framework="numpy") as f:
        state_dict = remap_v1_state_dict({k: f.get_tensor(k) for k in f.keys()})  # v1: old names
    like = jax.eval_shape(init_fn(metadata.model_from_metadata(meta), int(meta["image_size"])))
    return meta, jax.device_put(torch_state_dict_to_flax(state_dict, like), sharding)


def read_variables(source: Source, *, use_ema: bool = True, sharding=None) -> tuple[dict, dict]:
    """``(record, {'params', 'batch_stats'})`` of ``source`` on ``sharding`` (default replicated)."""
    sharding = replicated(sharding)
    if source.kind == "training":
        return _read_training(source, use_ema, sharding)
    if source.kind == "orbax":
        return _read_orbax(source, sharding)
    return _read_safetensors(source, sharding)
