"""Helpers for tests that run the real ``train.py`` in subprocesses.

Every run uses the same tiny digits config (`TINY`) and one persistent XLA compilation
cache per pytest session (`session_env`): a fresh process otherwise recompiles the
train step for minutes on a small CPU; with the cache, later runs load it in seconds.
Keep `TINY` identical between runs that should share compiled programs (the step
count and batch shape are baked into the program; ``stop_at_step`` is not).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# LLVM's cheap settings for test processes: tests compile many programs that run a few
# steps, and these options change how fast code runs, never its values (XLA CPU keeps
# fast-math off). A tiny train.py run from a cold cache: 107 -> 70 CPU s (2026-11-27).
# Runs that stand for a user's exact command (the README test) leave XLA_FLAGS unset.
CHEAP_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process: ``devices`` fake CPU devices, cheap compiles."""
    return f"--xla_force_host_platform_device_count={int(devices)} {CHEAP_COMPILE_FLAGS}"
TOTAL = 6
DEVICES = 4

# Heartbeat timeout (s) of the multi-process test runs. JAX's default, 100 s, aborts
# every process (SIGABRT, "tasks are unhealthy (stopped sending heartbeats)") when the
# machine stalls that long: CI once did, in the 4-process rehearsal. These tests check
# pod mechanics, not failure detection; a real hang still ends at the tests' timeouts.
TEST_HEARTBEAT_TIMEOUT_S = 900
HEARTBEAT_FLAG = f"--config.distributed_heartbeat_timeout_s={TEST_HEARTBEAT_TIMEOUT_S}"

# Small enough for CPU, but with everything that must survive a resume: gradient
# accumulation, EMA, gradient clipping, drop-path RNG, two input shards.
TINY = [
    "--config", "configs/digits.py",
    "--config.batch_size=16", "--config.eval_batch_size=16",
    f"--config.num_train_steps={TOTAL}",
    "--config.optim.grad_accum_steps=2", "--config.optim.ema_decay=0.9",
    "--config.optim.warmup_epochs=0.0", "--config.optim.grad_clip_norm=1.0",
    "--config.model.drop_path_rate=0.1",
    "--config.data.num_shards=2", "--config.data.shuffle_buffer=64",
    "--config.log_every_steps=1", "--config.eval_every_steps=1000", "--config.eval_at_end=False",
]


def session_env(basetemp: os.PathLike) -> dict[str, str]:
    """Environment for train.py subprocesses: CPU, quiet TF, a shared compilation cache
    and TFDS data folder under the pytest session's ``basetemp`` (shared by modules)."""
    root = os.path.join(os.fspath(basetemp), "train_subprocess_shared")
    os.makedirs(root, exist_ok=True)
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        # An outer cache (e.g. a CI cache folder) is kept: repeated sessions reuse it.
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(root, "xla_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=REPO,
        XLA_FLAGS=xla_flags(DEVICES),
        PYTHONUNBUFFERED="1",
    )
    env["DATA_DIR"] = os.path.join(root, "tfds")
    return env


def train_cmd(env: dict, workdir: os.PathLike, *extra: str, base: Sequence[str] = TINY) -> list[str]:
    """``python train.py <base> --config.data.data_dir=<shared> --workdir=W <extra>``."""
    return [sys.executable, "train.py", *base, f"--config.data.data_dir={env['DATA_DIR']}",
            f"--workdir={os.fspath(workdir)}", *extra]


def run(cmd: Sequence[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs ``cmd`` in the repository root; stdout and stderr captured separately."""
    return subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_ok(env: dict, workdir: os.PathLike, *extra: str, timeout: float = 900) -> str:
    """Runs train.py to completion; asserts exit 0; returns stdout + stderr."""
    p = run(train_cmd(env, workdir, *extra), env, timeout)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    return out


class Training:
    """A train.py subprocess whose merged stdout/stderr is read line by line."""

    def __init__(self, env: dict, workdir: os.PathLike, *extra: str):
        self.workdir = os.fspath(workdir)
        self.proc = subprocess.Popen(
            train_cmd(env, workdir, *extra), cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self.lines: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 900) -> str:
        """Reads lines until one satisfies ``predicate``; returns it (fails on EOF/timeout)."""
        deadline = time.time() + timeout
        for line in self.proc.stdout:
            self.lines.append(line)
            if predicate(line):
                return line
            assert time.time() < deadline, f"timed out waiting; output:\n{self.text[-4000:]}"
        raise AssertionError(f"train.py ended (rc {self.proc.wait()}) before the expected line:\n{self.text[-4000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 600) -> int:
        """Reads the rest of the output; returns the exit status."""
        rest, _ = self.proc.communicate(timeout=timeout)
        self.lines.append(rest or "")
        return self.proc.returncode


def step_line(step: int) -> Callable[[str], bool]:
    """Matches the progress line of ``step`` (``step 3/6 (50%) | ...``)."""
    return lambda line: line.startswith(f"step {step}/")


def committed_steps(workdir: os.PathLike) -> list[int]:
    """Finished checkpoint steps on disk (integer-named folders; tmp folders excluded)."""
    d = os.path.join(os.fspath(workdir), "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def partial_dirs(workdir: os.PathLike) -> list[str]:
    """Orbax's in-progress save folders (``<step>.orbax-checkpoint-tmp-<n>``)."""
    d = os.path.join(os.fspath(workdir), "checkpoints")
    return sorted(n for n in os.listdir(d) if ".orbax-checkpoint-tmp" in n) if os.path.isdir(d) else []


def kill_during_checkpoint_write(t: Training, after_step: int, timeout: float = 900) -> str:
    """SIGKILLs ``t`` while Orbax is writing a checkpoint of a step > ``after_step``.

    The process is frozen with SIGSTOP as soon as a tmp save folder shows up; if the
    folder is still there while frozen, SIGKILL lands mid-write (deterministically);
    otherwise it is resumed (SIGCONT) and the next save is tried. Returns the name of
    the partial folder left behind.
    """
    import threading

    reader = threading.Thread(target=lambda: [t.lines.append(ln) for ln in t.proc.stdout], daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert t.proc.poll() is None, f"train.py ended before a save could be interrupted:\n{t.text[-4000:]}"
        tmp = [n for n in partial_dirs(t.workdir) if int(n.split(".")[0]) > after_step]
        if tmp:
            t.proc.send_signal(signal.SIGSTOP)
            still = [n for n in partial_dirs(t.workdir) if n in tmp]
            if still:
                t.proc.send_signal(signal.SIGKILL)
                t.proc.wait(timeout=60)
                reader.join(timeout=60)
                return still[0]
            t.proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError(f"no checkpoint write seen within {timeout}s:\n{t.text[-4000:]}")


def final_state(workdir: os.PathLike, step: int | None = None):
    """``(step, state, meta)`` of checkpoint ``step`` (default newest), as NumPy arrays."""
    import jax
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(os.path.join(os.fspath(workdir), "checkpoints"), item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(create=False, read_only=True))
    step = mngr.latest_step() if step is None else step
    meta_tree = mngr.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta_tree)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                          meta=ocp.args.JsonRestore()))
    mngr.close()
    return step, jax.tree.map(np.asarray, restored["state"]), restored["meta"]


def assert_same_state(a, b, atol: float = 1e-6) -> None:
    """Same tree paths, and every leaf within ``atol`` (params, EMA, BN stats, Adam moments)."""
    import jax

    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


def snapshot(path: os.PathLike) -> dict[str, tuple[int, int]] | None:
    """``{relative path: (size, mtime_ns)}`` of everything under ``path``; None if absent."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.stat(full)
            out[os.path.relpath(full, path)] = (st.st_size if name in files else 0, st.st_mtime_ns)
    return out
