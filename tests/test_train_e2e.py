"""End-to-end runs of train.py in subprocesses (tiny model, 32x32 digits, few steps).

- resume: a run stopped at step 3 (mid gradient accumulation) and resumed ends with
  the same parameters, EMA and BatchNorm statistics as an uninterrupted run (<= 1e-6).
- multi-host: the same run as 2 processes x 2 CPU devices (gloo collectives), started
  as a SLURM job step without any distributed flag, ends with the same parameters as
  1 process x 4 devices (<= 1e-5).
- preemption: SIGTERM saves the current step, prints "preempted", exits 143; the
  next run resumes from that step.
- eval-only mode and the plot command on the finished workdir.

All runs share a persistent XLA compilation cache (same programs compile once).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from subprocess_runs import HEARTBEAT_FLAG, xla_flags  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 6

# Everything a run needs to be small; stop_at_step ends it early without changing the
# compiled program (so the persistent cache is shared by every run below).
COMMON = [
    "--config", "configs/digits.py",
    "--config.batch_size=16", "--config.eval_batch_size=16",
    f"--config.num_train_steps={TOTAL}",
    "--config.optim.grad_accum_steps=2", "--config.optim.ema_decay=0.9",
    "--config.optim.warmup_epochs=0.0", "--config.optim.grad_clip_norm=1.0",
    "--config.model.drop_path_rate=0.1",  # exercises the per-step RNG on resume
    "--config.data.num_shards=2", "--config.data.shuffle_buffer=64",
    "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=1000", "--config.eval_at_end=False",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    e = dict(os.environ)
    e.update(
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        # The session's shared cache (tests/conftest.py) when there is one.
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(root / "xla_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=REPO,
    )
    e["DATA_DIR"] = str(root / "tfds")
    return e


def _args(env, workdir, *extra):
    return [sys.executable, "train.py", *COMMON, f"--config.data.data_dir={env['DATA_DIR']}",
            f"--workdir={workdir}", *extra]


def _run(env, workdir, *extra, devices=4, timeout=600):
    e = dict(env, XLA_FLAGS=xla_flags(devices))
    p = subprocess.run(_args(env, workdir, *extra), cwd=REPO, env=e, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final_state(workdir):
    """``(step, state, meta)`` of the newest checkpoint, state as NumPy arrays.

    Restored onto one device of this process from the saved shapes, whatever the
    topology (processes, devices) that wrote it.
    """
    import jax
    import orbax.checkpoint as ocp

    from dmformer_jax.checkpoint import read_meta

    meta, step = read_meta(workdir)
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    shapes = checkpointer.metadata(path)
    shapes = getattr(shapes, "item_metadata", shapes)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), shapes)
    state = jax.tree.map(np.asarray, checkpointer.restore(path, target))
    return step, state, meta


def _assert_same(a, b, atol):
    import jax

    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("full"))
    out = _run(env, workdir)
    assert f"step {TOTAL}/{TOTAL}" in out
    return workdir


def test_resume_matches_uninterrupted(env, uninterrupted, tmp_path):
    workdir = str(tmp_path / "resumed")
    out1 = _run(env, workdir, "--config.stop_at_step=3")
    assert "stopped at step 3" in out1
    out2 = _run(env, workdir)
    assert "resuming from checkpoint step 3" in out2

    step_a, a, meta_a = _final_state(uninterrupted)
    step_b, b, _ = _final_state(workdir)
    assert step_a == step_b == TOTAL == int(a["step"]) == int(b["step"])
    # Params moved (the comparison is not between two untouched initialisations).
    assert meta_a["variant"] == "dmformer_tiny_test" and meta_a["num_classes"] == 10
    for key in ("params", "batch_stats", "ema_params", "opt_state"):
        _assert_same(a[key], b[key], atol=1e-6)


def _slurm_job_id() -> int:
    """A SLURM_JOB_ID whose derived coordinator port is free: JAX's SLURM detection
    listens on 61440 + job_id % 4096 (jax/_src/clusters/slurm_cluster.py)."""
    import random

    for _ in range(200):
        job = random.randrange(100_000, 10_000_000)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", job % 4096 + 61440))
            return job
        except OSError:
            continue
    raise AssertionError("no free port in JAX's SLURM coordinator range")


def test_two_processes_match_one(env, uninterrupted, tmp_path):
    """Two processes launched as a SLURM job step, with no distributed flag: the default
    ``config.distributed='auto'`` finds the cluster through JAX's own SLURM detection."""
    workdir = str(tmp_path / "multi")
    job = _slurm_job_id()
    procs = []
    for i in range(2):
        e = dict(env, XLA_FLAGS=xla_flags(2), SLURM_JOB_ID=str(job),
                 SLURM_NTASKS="2", SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_STEP_NODELIST="localhost",
                 SLURM_STEP_NUM_NODES="1")
        procs.append(subprocess.Popen(_args(env, workdir, HEARTBEAT_FLAG), cwd=REPO, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert "4 cpu device(s), 2 process(es)" in outs[0][0]
    assert "compiled the train step in" in outs[0][0]  # ahead of time, at start-up
    assert not [ln for ln in outs[1][0].splitlines() if ln.startswith("step ")]  # process 1 logs nothing
    _, a, _ = _final_state(uninterrupted)
    _, b, _ = _final_state(workdir)
    _assert_same(a["params"], b["params"], atol=1e-5)
    _assert_same(a["batch_stats"], b["batch_stats"], atol=1e-5)


def test_sigterm_saves_and_resumes(env, tmp_path):
    workdir = str(tmp_path / "preempt")
    e = dict(env, XLA_FLAGS=xla_flags(4))
    # Long enough that it is still running when the signal comes.
    args = _args(env, workdir, "--config.num_train_steps=100000")
    proc = subprocess.Popen(args, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 600
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline
    out, err = proc.communicate(timeout=300)
    out = "".join(lines) + out
    assert proc.returncode == 143, out[-2000:] + err[-2000:]
    assert "preempted at step" in out and "preempted" in err
    stopped = int(out.split("preempted at step ")[1].split(":")[0])
    assert stopped >= 2
    step, state, _ = _final_state(workdir)
    assert step == stopped == int(state["step"])

    # Resume: continues from the saved step (here to stop_at_step, to stay short).
    resumed = _run(env, workdir, "--config.num_train_steps=100000", f"--config.stop_at_step={stopped + 1}")
    assert f"resuming from checkpoint step {stopped}" in resumed
    assert f"step {stopped + 1}/100000" in resumed


def test_eval_only_and_plot(env, uninterrupted, tmp_path):
    e = dict(env, XLA_FLAGS=xla_flags(4))
    p = subprocess.run([sys.executable, "-m", "dmformer_jax.eval", f"--workdir={uninterrupted}"],
                       cwd=REPO, env=e, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("eval of")][0]
    assert "300 images" in line  # the whole validation split, padding masked
    top1 = float(line.split("top1 ")[1].split("%")[0])
    top5 = float(line.split("top5 ")[1].split("%")[0])
    assert 0 <= top1 <= top5 <= 100

    out = tmp_path / "curves.png"
    p = subprocess.run([sys.executable, "-m", "dmformer_jax.plot", uninterrupted, "--out", str(out)],
                       cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(os.path.join(uninterrupted, "tensorboard"))


def test_missing_checkpoint_is_one_line_error(env, tmp_path):
    p = subprocess.run([sys.executable, "-m", "dmformer_jax.eval", f"--workdir={tmp_path / 'none'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: no checkpoints in")
