"""Standalone exports of inference variables: ``.safetensors`` or an Orbax folder.

An existing path is never overwritten, and a crash never leaves a half-written export
under the real name (it is written under ``<name>.tmp`` and renamed).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
from etils import epath

from dmformer_jax.checkpoint.layout import METADATA_FILE, SAFETENSORS_KEY, VARIABLES_ITEM
from dmformer_jax.errors import CheckpointError
from dmformer_jax.paths import resolve


def write_export(path: str, variables: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """Writes ``{'params', 'batch_stats'}`` and the v2 ``record`` to ``path``; returns it (absolute).

    ``path`` ending in ``.safetensors``: one file, PyTorch state-dict names/layouts,
    the record as JSON in the header. Any other ``path``: a folder holding an Orbax
    PyTree (``variables/``) and ``dmformer.json``.
    """
    path = resolve(path)
    out = epath.Path(path)
    if out.exists():
        raise CheckpointError(f"{path} already exists; export to a new path (existing files are never overwritten)")
    inference = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    tmp = out.parent / (out.name + ".tmp")
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import save_file

        from dmformer_jax.checkpoint.convert import flax_to_torch_state_dict

        state_dict = flax_to_torch_state_dict(jax.device_get(inference))
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(state_dict, os.fspath(tmp), metadata={SAFETENSORS_KEY: json.dumps(dict(record))})
        tmp.rename(out)
        return path
    import orbax.checkpoint as ocp

    if tmp.exists():
        tmp.rmtree()
    tmp.mkdir(parents=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp / VARIABLES_ITEM, inference)
        checkpointer.wait_until_finished()
    (tmp / METADATA_FILE).write_text(json.dumps(dict(record), indent=1))
    tmp.rename(out)
    return path
