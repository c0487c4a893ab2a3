"""Fine-tuning from ``--config.init_from``: a fresh `TrainState` whose weights come
from a pretrained checkpoint or export.

The file is read by `dmformer_jax.checkpoint` (any training checkpoint or export, v1
names remapped); the merge itself (by path, with a report) is
`dmformer_jax.models.pretrained`, pure tree code that `dmformer_jax.api.load` uses too.
The trainer never goes through the research API.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from dmformer_jax.checkpoint import layout
from dmformer_jax.checkpoint.variables import read_variables
from dmformer_jax.errors import CheckpointError
from dmformer_jax.models.pretrained import merge_pretrained


def init_state_from_pretrained(
    config, state: Any, log=print, *, prefix: Sequence[str] = ("backbone",)
) -> Any:
    """A fresh `TrainState` whose params/batch_stats/EMA come from ``config.init_from``.

    Called by the trainer when ``config.init_from`` is set and the workdir has no
    checkpoint of its own. The optimizer state stays fresh (Adam moments are zeros and
    do not depend on parameter values). The merge report goes to ``log``. ``prefix``:
    where the model being trained holds its `Backbone` (`merge_pretrained`).
    """
    sharding = jax.tree.leaves(state.params)[0].sharding
    try:
        _, pretrained = read_variables(layout.locate(str(config.init_from)), sharding=sharding)
    except CheckpointError as e:
        raise CheckpointError(f"--config.init_from={config.init_from}: {e}") from None
    variables, report = merge_pretrained(
        {"params": state.params, "batch_stats": state.batch_stats},
        pretrained,
        reset_head=bool(config.reset_head),
        prefix=prefix,
    )
    log(f"initialised from {config.init_from}: {report.summary()}")
    ema = None if state.ema_params is None else jax.tree.map(jnp.copy, variables["params"])
    return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}), ema_params=ema)
