"""Nothing is lost under kills, preemption, corrupt checkpoints and bad images.

All tests run the real train.py in subprocesses on the embedded digits dataset (tiny
model, 32x32, 6 steps, a checkpoint every step) and compare final train states with
an uninterrupted run of the same command (params, EMA, BatchNorm statistics and Adam
moments, atol 1e-6):

- soak: SIGKILL at a random step; rerun, SIGKILL while a checkpoint is being written;
  rerun (the partial checkpoint is ignored with a warning naming it), SIGTERM at a
  random step (checkpoint of that step, exit 143, "preempted"); rerun to the end.
  The random steps come from a seeded RNG and are printed (``pytest -s``).
- corrupt checkpoints: the newest has a truncated data file, the one before a garbled
  JSON item; the rerun warns about both, resumes from the newest readable one, keeps
  the good one byte-for-byte, and ends equal to the uninterrupted run.
- undecodable JPEGs in a tiny ILSVRC2012 layout are skipped, counted and logged.

Everything shares one persistent XLA compilation cache (tests/subprocess_runs.py).
"""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest

import subprocess_runs as sr  # noqa: E402  (tests/ is on sys.path under pytest)

pytestmark = pytest.mark.slow

SEED = 5
CKPT = ["--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3"]
STATE_KEYS = ("params", "batch_stats", "ema_params", "opt_state")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sr.session_env(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
    """Workdir of the reference run (never modified by the tests)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = sr.run_ok(env, workdir, *CKPT)
    assert f"step {sr.TOTAL}/{sr.TOTAL}" in out
    assert sr.committed_steps(workdir) == [sr.TOTAL - 2, sr.TOTAL - 1, sr.TOTAL]
    return workdir


def _assert_matches_reference(workdir, reference_workdir):
    step_a, a, _ = sr.final_state(reference_workdir)
    step_b, b, _ = sr.final_state(workdir)
    assert step_a == step_b == sr.TOTAL == int(a["step"]) == int(b["step"])
    for key in STATE_KEYS:
        sr.assert_same_state(a[key], b[key], atol=1e-6)


def test_soak_kill_kill_mid_write_preempt_resume(env, uninterrupted, tmp_path):
    rng = np.random.default_rng(SEED)
    workdir = tmp_path / "soak"

    # Cycle 1: SIGKILL right after a random step (3 or 4: step 1 is committed by then).
    k1 = int(rng.integers(3, 5))
    print(f"\n[soak seed {SEED}] cycle 1: SIGKILL at step {k1}")
    t = sr.Training(env, workdir, *CKPT)
    t.wait_for(sr.step_line(k1))
    t.signal(signal.SIGKILL)
    assert t.finish() == -signal.SIGKILL
    r1 = sr.committed_steps(workdir)[-1]
    assert 1 <= r1 <= k1
    partial1 = sr.partial_dirs(workdir)

    # Cycle 2: resumes from the last committed step; SIGKILL lands inside a save.
    t = sr.Training(env, workdir, *CKPT)
    t.wait_for(lambda line: line.startswith("resuming from checkpoint"))
    assert f"resuming from checkpoint step {r1} " in t.text, t.text[-3000:]
    for name in partial1:  # a kill in cycle 1 may also have hit a save
        assert name in t.text, f"no warning names the partial checkpoint {name}:\n{t.text[-3000:]}"
    partial = sr.kill_during_checkpoint_write(t, after_step=r1)
    print(f"[soak seed {SEED}] cycle 2: SIGKILL during the write of {partial}")
    assert partial in sr.partial_dirs(workdir)
    r2 = sr.committed_steps(workdir)[-1]
    assert r1 <= r2 < int(partial.split(".")[0])

    # Cycle 3: the partial save is ignored with a warning that names it; SIGTERM.
    k3 = min(r2 + 1 + int(rng.integers(0, 2)), sr.TOTAL - 1)
    print(f"[soak seed {SEED}] cycle 3: resume from {r2}, SIGTERM at step {k3}")
    t = sr.Training(env, workdir, *CKPT)
    t.wait_for(sr.step_line(k3))
    warning = [ln for ln in t.lines if partial in ln]
    assert warning and "warning" in warning[0].lower(), t.text[-3000:]
    assert f"resuming from checkpoint step {r2} " in t.text, t.text[-3000:]
    t.signal(signal.SIGTERM)
    assert t.finish() == 143, t.text[-3000:]
    assert "preempted at step" in t.text
    stopped = int(t.text.split("preempted at step ")[1].split(":")[0])
    assert k3 <= stopped <= sr.TOTAL
    step, state, _ = sr.final_state(workdir)
    assert step == stopped == int(state["step"])

    # Cycle 4: resumes at the preempted step and finishes equal to the reference.
    out = sr.run_ok(env, workdir, *CKPT)
    assert f"resuming from checkpoint step {stopped} " in out, out[-3000:]
    assert not sr.partial_dirs(workdir)
    _assert_matches_reference(workdir, uninterrupted)


def _tree_bytes(path):
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def test_corrupt_newest_checkpoints_fall_back_to_newest_readable(env, uninterrupted, tmp_path):
    workdir = tmp_path / "corrupt"
    shutil.copytree(uninterrupted, workdir)
    ckpts = workdir / "checkpoints"
    newest, second, good = sr.TOTAL, sr.TOTAL - 1, sr.TOTAL - 2
    # Newest: its array data files are cut to half (a full disk, a copy gone wrong).
    # (Cutting only one OCDBT file may hit bytes no array refers to: still readable.)
    data = [p for p in (ckpts / str(newest) / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for path in data:
        os.truncate(path, path.stat().st_size // 2)
    # The one before: its JSON item is garbled.
    (ckpts / str(second) / "meta" / "metadata").write_bytes(b"\x00garbled{")
    before_good = _tree_bytes(ckpts / str(good))
    before_bad = {s: _tree_bytes(ckpts / str(s)) for s in (newest, second)}

    out = sr.run_ok(env, workdir, *CKPT)

    for s in (newest, second):
        line = [ln for ln in out.splitlines() if f"checkpoint step {s} " in ln and "unreadable" in ln]
        assert line and line[0].lower().startswith("warning"), out[-3000:]
    assert f"resuming from checkpoint step {good} " in out, out[-3000:]
    # The good checkpoint is untouched; the corrupt ones are kept aside, not deleted.
    assert _tree_bytes(ckpts / str(good)) == before_good
    aside = workdir / "checkpoints_unreadable"
    kept = {int(n.split(".")[0]): _tree_bytes(aside / n) for n in os.listdir(aside)}
    assert kept == before_bad
    # Steps good+1.. were retrained and equal the uninterrupted run's.
    assert sr.committed_steps(workdir) == [good, second, newest]
    _assert_matches_reference(workdir, uninterrupted)


def test_undecodable_images_are_skipped_counted_and_logged(env, tmp_path):
    from ilsvrc_fixture import write_tiny_ilsvrc

    written = write_tiny_ilsvrc(tmp_path / "manual", images_per_class=3, val_images=4, size=40, garbled=2)
    (tmp_path / "tfds").mkdir()  # TFDS prepares imagenet2012 from the tars into it
    out = sr.run_ok(
        env, tmp_path / "run", "--config.data.name=imagenet2012", f"--config.data.manual_dir={tmp_path / 'manual'}",
        f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.stop_at_step=2",
    )
    assert "step 2/" in out
    lines = [ln for ln in out.splitlines() if "undecodable image" in ln]
    assert lines, out[-3000:]
    count = int(lines[-1].split("skipped ")[1].split()[0])
    # 2 garbled JPEGs among 14 train records; 32 images drawn = more than 2 epochs of each shard.
    assert count >= len(written["garbled"]), lines
