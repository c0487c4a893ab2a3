"""Checkpoints and exports: the one place that knows their layout and metadata.

- `layout`: folder and file names, `locate` (what a user's path is).
- `metadata`: the record (schema v2, full architecture) and upgrades of older ones.
- `manifest`: SHA-256 manifests of training steps.
- `training`: Orbax save/restore of a run's `TrainState` with fault handling.
- `variables`: inference variables + record from any checkpoint or export.
- `export`: standalone ``.safetensors`` / Orbax exports.
"""

from dmformer_jax.checkpoint import layout, manifest, metadata, training, variables
from dmformer_jax.checkpoint.layout import (
    CHECKPOINT_SUBDIR, MANIFEST, META, STATE, UNREADABLE_SUBDIR, Source, checkpoint_dir, locate,
)
from dmformer_jax.checkpoint.manifest import verify_manifest, write_manifest
from dmformer_jax.checkpoint.training import (
    Saver, latest_step, make_manager, partial_saves, read_meta, restore, restore_latest, save,
)

__all__ = [
    "layout", "manifest", "metadata", "training", "variables",
    "CHECKPOINT_SUBDIR", "MANIFEST", "META", "STATE", "UNREADABLE_SUBDIR", "Source", "checkpoint_dir", "locate",
    "verify_manifest", "write_manifest",
    "Saver", "latest_step", "make_manager", "partial_saves", "read_meta", "restore", "restore_latest", "save",
]
