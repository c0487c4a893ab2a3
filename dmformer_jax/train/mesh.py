"""The device mesh and the shardings of the data-parallel trainer.

One mesh axis, ``'data'``, over every device of every process. Parameters and
optimizer state are replicated; batches are split along their first axis. Under
``jax.jit`` this makes XLA insert the gradient all-reduce and the global-batch
BatchNorm statistics by itself.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from dmformer_jax.sharding import DATA_AXIS, replicated  # noqa: F401  (part of this module's API)


def make_mesh() -> Mesh:
    """A 1-D ``('data',)`` mesh over all ``jax.devices()`` (all processes)."""
    # Auto axis types: plain GSPMD propagation; the model code needs no sharding hints.
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: split along axis 0 over ``'data'``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles this process's rows into global, batch-sharded arrays.

    Args:
      mesh: from `make_mesh`.
      local: per-process numpy arrays, each ``(B / process_count, ...)``.

    Returns:
      the same keys as global ``jax.Array`` s of shape ``(B, ...)``; process ``p``'s
      rows come ``p``-th along axis 0.
    """
    sharding = batch_sharded(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in local.items()
    }


def tree_replicated(mesh: Mesh, tree: Any) -> Any:
    """A pytree of `replicated` shardings matching ``tree``'s leaves."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda _: sharding, tree)
