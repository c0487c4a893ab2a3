"""Shardings shared by the trainer and the checkpoint readers (a leaf module: JAX only)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh`` (parameters, optimizer state, loaded weights)."""
    return NamedSharding(mesh, PartitionSpec())


def local_mesh() -> Mesh:
    """A 1-D ``('data',)`` mesh over this process's devices only (for loading weights)."""
    return Mesh(np.array(jax.local_devices()), (DATA_AXIS,))
