"""Test setup: 8 fake CPU devices (for sharding tests), set before JAX starts."""

import os

import pytest

from subprocess_runs import xla_flags  # noqa: E402  (tests/ is on sys.path; imports no JAX)

# Must precede the first `import jax` anywhere in the test session. In-process tests
# compile many small programs that run once or a few times, so they compile with LLVM's
# cheap settings too (`subprocess_runs.CHEAP_COMPILE_FLAGS`, also what `models.init`
# uses for init): 29% less CPU for test_models/test_seg_models/test_seg_task (198 ->
# 141 CPU s), no change for the in-process training of test_learning (53 vs 51 CPU s),
# 2026-11-27. Values are unchanged (XLA CPU keeps fast-math off).
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
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


@pytest.fixture(scope="module")
def persistent_compile_cache(tmp_path_factory):
    """Every compile of the module's tests goes to the persistent cache (also those under
    JAX's 1 s default threshold), so tests that compile the same train step several
    times load it after the first. Use with ``pytest.mark.usefixtures``."""
    import jax

    old = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", old[0] or str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
