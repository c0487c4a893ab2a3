"""Keep freed host memory mapped between CPU training steps (Linux, glibc).

Why: XLA's CPU runtime allocates each step's temporaries (8.4 GiB for dmformer_s at
batch 32) with ``malloc`` from its worker threads, and glibc serves such large
requests with a fresh ``mmap`` that ``free`` unmaps again. So every step re-faults
all of it, millions of minor page faults per dmformer_s step, and far more when
other processes hold memory. Serving every thread from the main heap
(``M_ARENA_MAX=1``), never via ``mmap`` (``M_MMAP_MAX=0``) and never trimming it
(``M_TRIM_THRESHOLD``) keeps those pages mapped (measured: docs/benchmarks.md). The cost is that the process keeps its peak
host memory until it exits, which a training process needs again at every step.

Only for the CPU backend: on GPU/TPU hosts the big buffers live on the device, and a
single malloc arena would serialise the input pipeline's many threads. It must run
before JAX starts its CPU client (whose threads pick their malloc arena on first use),
so it decides from ``JAX_PLATFORMS`` and the installed accelerator plugins, not from
``jax.default_backend()``. Set ``DMFORMER_KEEP_HOST_MEMORY=0`` to turn it off.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

ACCELERATOR_PLUGINS = (
    "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu",
)
ENV_SWITCH = "DMFORMER_KEEP_HOST_MEMORY"


def cpu_backend_expected() -> bool:
    """Whether JAX will run on its CPU backend, judged without starting JAX."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def keep_freed_host_memory() -> bool:
    """Configures glibc malloc to keep freed memory mapped (see module docstring).

    Call before JAX's first computation. Returns True when applied; False on
    non-Linux systems, accelerator backends, or with ``DMFORMER_KEEP_HOST_MEMORY=0``.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if not cpu_backend_expected():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    ok = libc.mallopt(M_ARENA_MAX, 1) and libc.mallopt(M_MMAP_MAX, 0)
    # -1 becomes SIZE_MAX inside glibc (the threshold is a size_t): never trim.
    ok = ok and libc.mallopt(M_TRIM_THRESHOLD, -1)
    return bool(ok)
