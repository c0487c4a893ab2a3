"""Parameter initialisation that compiles quickly.

``jax.jit(model.init)`` compiles the whole forward pass plus one random-number
kernel per parameter; on XLA's CPU backend LLVM spends most of that time optimising
code that runs exactly once (docs/architecture.md, "Implementation notes").
`init_variables` compiles init with LLVM's cheap settings on CPU,
which changes how fast init runs, never the values it returns.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Public: the trainer compiles its whole initial TrainState with the same options.
FAST_COMPILE_CPU = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_on_zeros(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """``model.init`` (inference mode) on float32 zeros of ``input_shape``, not jitted.

    The one place a DMFormer is initialised: `init_variables` jits it, the trainer
    builds its `TrainState` around it, and readers ``jax.eval_shape`` it for shapes.
    """
    return model.init(key, jnp.zeros(tuple(int(d) for d in input_shape), jnp.float32))


@functools.lru_cache(maxsize=16)
def _jitted_init(model: nn.Module, input_shape: tuple[int, ...], out_shardings: Any, backend: str):
    def init(rng):
        return init_on_zeros(model, rng, input_shape)

    options = dict(FAST_COMPILE_CPU) if backend == "cpu" else None
    return jax.jit(init, out_shardings=out_shardings, compiler_options=options)


def init_variables(
    model: nn.Module,
    key: jax.Array,
    input_shape: Sequence[int],
    *,
    out_shardings: Any = None,
) -> dict[str, Any]:
    """``model.init`` on zeros of ``input_shape`` (e.g. ``(1, 224, 224, 3)``), jitted.

    Args:
      model: a Flax module whose ``__call__`` takes images.
      key: a ``jax.random.key``.
      input_shape: ``(B, H, W, 3)``; only the shape matters.
      out_shardings: optional shardings of the returned variables (e.g. replicated
        over a mesh), so nothing is materialised twice.

    Returns:
      The variables dict (``params`` and ``batch_stats``).
    """
    init = _jitted_init(model, tuple(int(d) for d in input_shape), out_shardings, jax.default_backend())
    return init(key)


def fast_compile_options() -> dict[str, Any] | None:
    """Compiler options for run-once programs (init) on this backend, or None."""
    return dict(FAST_COMPILE_CPU) if jax.default_backend() == "cpu" else None
