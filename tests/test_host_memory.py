"""dmformer_jax.host_memory: freed host memory stays mapped (no re-faulting), and the
switch respects GPU/TPU platforms and the opt-out variable."""

import subprocess
import sys
import textwrap

import pytest

from dmformer_jax import host_memory

# Allocate, touch and free a 256 MiB block twice from fresh threads (as XLA's worker
# threads do), printing the minor page faults of the second round.
PROBE = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from dmformer_jax.host_memory import keep_freed_host_memory
    applied = keep_freed_host_memory() if sys.argv[1] == "1" else False
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 256 * 2**20
    def touch():
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
    for round_ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = threading.Thread(target=touch); t.start(); t.join()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(applied, faults)
""")


def _second_round_faults(apply: str) -> tuple[bool, int]:
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE, apply], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_memory_is_not_faulted_in_again():
    applied, faults_kept = _second_round_faults("1")
    assert applied
    _, faults_default = _second_round_faults("0")
    # 256 MiB in 4 KiB pages is 65,536 faults when the block is mapped afresh (huge
    # pages would give ~128); kept memory needs almost none.
    assert faults_default > 100, faults_default
    assert faults_kept < faults_default / 10, (faults_kept, faults_default)


def test_accelerator_platforms_and_opt_out_are_left_alone(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not host_memory.cpu_backend_expected()
    assert host_memory.keep_freed_host_memory() is False
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.cpu_backend_expected()
    monkeypatch.setenv(host_memory.ENV_SWITCH, "0")
    assert host_memory.keep_freed_host_memory() is False
