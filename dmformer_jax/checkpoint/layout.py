"""Where checkpoints and exports live on disk, and what a path a user passes is.

Training checkpoints (written by `dmformer_jax.checkpoint.training`)::

    WORKDIR/checkpoints/<step>/state/                 Orbax PyTree: the TrainState
    WORKDIR/checkpoints/<step>/meta/metadata          JSON: the metadata record
    WORKDIR/checkpoints/<step>/dmformer_manifest.json SHA-256 of every file
    WORKDIR/checkpoints_unreadable/<step>[.n]/        steps set aside, never deleted

Exports (written by `dmformer_jax.checkpoint.export`): a ``.safetensors`` file (PyTorch
names, the record in the header under ``"dmformer"``) or a folder holding
``variables/`` (Orbax) and ``dmformer.json`` (the record).

No other module spells these names.
"""

from __future__ import annotations

import dataclasses
import os

from etils import epath

from dmformer_jax.errors import CheckpointError
from dmformer_jax.paths import resolve

STATE, META = "state", "meta"  # the two Orbax items of a training step
META_FILE = "metadata"  # the JSON file Orbax's JsonCheckpointHandler writes in META
CHECKPOINT_SUBDIR = "checkpoints"
UNREADABLE_SUBDIR = "checkpoints_unreadable"
PARTIAL_MARKER = ".orbax-checkpoint-tmp"
MANIFEST = "dmformer_manifest.json"
METADATA_FILE = "dmformer.json"  # next to the Orbax item in an exported folder
VARIABLES_ITEM = "variables"
SAFETENSORS_KEY = "dmformer"  # safetensors header metadata key holding the JSON record


def checkpoint_dir(workdir: str) -> epath.Path:
    """Where the checkpoints of ``workdir`` live (absolute local path, or ``gs://``).

    Orbax saves only to absolute paths (a relative one fails in its save thread).
    """
    return epath.Path(resolve(workdir)) / CHECKPOINT_SUBDIR


def is_training_step(path: epath.Path) -> bool:
    """Whether ``path`` is one finished training step folder (``checkpoints/<step>``)."""
    return path.name.isdigit() and (path / STATE).exists()


def training_steps(root: epath.Path) -> list[int]:
    """The finished steps under a ``checkpoints`` folder, ascending."""
    if not (root.exists() and root.is_dir()):
        return []
    return sorted(int(child.name) for child in root.iterdir() if is_training_step(child))


@dataclasses.dataclass(frozen=True)
class Source:
    """What a user's path points at.

    ``kind``: 'training' (``path`` is the ``checkpoints`` folder, ``step`` the step),
    'orbax' (an exported folder) or 'safetensors' (an exported file).
    """

    kind: str
    path: str
    step: int | None = None

    @property
    def step_dir(self) -> epath.Path:
        """The step folder of a 'training' source."""
        return epath.Path(self.path) / str(self.step)


def locate(path: str, step: int | None = None) -> Source:
    """Works out what ``path`` is; raises `CheckpointError` naming what was expected.

    Accepts a training workdir, its ``checkpoints`` folder, one step folder, an exported
    Orbax folder or an exported ``.safetensors`` file (local or ``gs://``).
    """
    path = resolve(path)  # Orbax reads no metadata from relative paths
    p = epath.Path(path)
    if path.endswith(".safetensors"):
        if not p.exists():
            raise CheckpointError(f"{path} does not exist; pass an exported .safetensors file")
        return Source("safetensors", os.fspath(p))
    if (p / METADATA_FILE).exists():
        return Source("orbax", os.fspath(p))
    if is_training_step(p) and (p / META).exists():
        if step is not None and step != int(p.name):
            raise CheckpointError(f"{path} is the checkpoint of step {p.name}, not step {step}")
        return Source("training", os.fspath(p.parent), int(p.name))
    for root in (p / CHECKPOINT_SUBDIR, p):
        steps = training_steps(root)
        if steps:
            if step is None:
                step = steps[-1]
            elif step not in steps:
                raise CheckpointError(f"no checkpoint of step {step} in {root}; available: {steps}")
            return Source("training", os.fspath(root), step)
    raise CheckpointError(
        f"{path} is neither a training workdir/checkpoint nor an exported DMFormer "
        f"({METADATA_FILE} folder or .safetensors file); check the path"
    )
