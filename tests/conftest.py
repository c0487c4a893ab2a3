"""Test setup: 8 fake CPU devices (for sharding tests), set before JAX starts."""

import os

# Must precede the first `import jax` anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    """One persistent XLA compilation cache for the whole session: in-process tests,
    every xdist worker and every train.py subprocess (tests/subprocess_runs.py) share
    it, so a program compiled once (e.g. the tiny train step) is loaded everywhere else.

    Set on the controller before the workers start (they inherit the environment); an
    outer JAX_COMPILATION_CACHE_DIR (e.g. a CI cache) is kept.
    """
    if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import tempfile

    config._dmformer_cache = tempfile.mkdtemp(prefix="dmformer-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config._dmformer_cache


def pytest_unconfigure(config):
    cache = getattr(config, "_dmformer_cache", None)
    if cache:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
