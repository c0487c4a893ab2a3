"""Which JAX backend this process runs on, for defaults that differ per backend.

A leaf module (imports only JAX), so the data pipeline and the trainer can share it.
"""

from __future__ import annotations

import jax

# Backends where 'auto' means bfloat16 compute (and uint8 input transfer): their matrix
# units run bfloat16 at full rate. CPU keeps float32 (no faster there, and the CPU
# tests' numerics stay exact).
ACCELERATORS = ("tpu", "gpu", "cuda", "rocm")


def on_accelerator(backend: str | None = None) -> bool:
    """Whether ``backend`` (default `jax.default_backend()`) is a TPU or GPU."""
    return (backend or jax.default_backend()) in ACCELERATORS
