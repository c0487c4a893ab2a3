"""The checkpoint module's fault paths, in-process (seconds, no train.py subprocess).

What a rerun finds in a workdir after a kill, a crash or damaged files, and what the
trainer is told: partial saves are named and never read; unreadable steps are skipped
newest-first and set aside (never deleted, never overwritten); a transient read error
is retried; no readable step is an error that lists each step's reason and moves
nothing; a failed save names its step and path. The subprocess tests of
`test_reliability.py` run the same paths through train.py; these make each path's
contract fail fast when it breaks (and let the mutation tool reach them).
"""

from __future__ import annotations

import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmformer_jax import checkpoint as ckpt
from dmformer_jax.checkpoint import training
from dmformer_jax.errors import CheckpointError, CheckpointSaveError
from dmformer_jax.train import loop
import train_synthetic as syn

STEPS = (1, 2, 3)


def _state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"params": {"w": jnp.asarray(rng.standard_normal(64), jnp.float32)}, "step": jnp.array(step)}


def _abstract() -> dict:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), _state(0))


def _meta(step: int) -> dict:
    """The trainer's metadata record for ``step`` (a tiny model's)."""
    return loop.checkpoint_meta(syn.tiny_config(), syn.NUM_CLASSES, step)


def _w(state) -> np.ndarray:
    return np.asarray(state["params"]["w"])


def _save(workdir, *steps: int) -> None:
    """Saves ``steps`` (each its own values) as the trainer saves: `Saver`, forced, waited."""
    saver = ckpt.Saver(ckpt.make_manager(workdir, max_to_keep=5))
    try:
        for step in steps:
            saver.save(step, _state(step), _meta(step), force=True)
            saver.wait()
    finally:
        saver.close()


@pytest.fixture
def workdir(tmp_path):
    """A workdir with committed steps 1, 2, 3."""
    _save(tmp_path, *STEPS)
    return tmp_path


def _damage(workdir, step: int) -> None:
    """Removes a data file of ``step`` (its manifest then names the missing file)."""
    state_dir = ckpt.checkpoint_dir(workdir) / str(step) / ckpt.STATE
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs)
    os.remove(max(files, key=os.path.getsize))


def test_no_checkpoints_folder_is_a_fresh_start_and_creates_nothing(tmp_path):
    assert ckpt.restore_latest(tmp_path, _abstract(), log=pytest.fail) is None
    assert os.listdir(tmp_path) == []


def test_latest_step_and_all_steps(workdir):
    mngr = ckpt.make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        assert ckpt.latest_step(mngr) == 3
        assert list(mngr.all_steps()) == [1, 2, 3]
    finally:
        mngr.close()
    empty = ckpt.make_manager(workdir / "elsewhere", async_checkpointing=False)
    try:
        assert ckpt.latest_step(empty) is None
    finally:
        empty.close()


def test_newest_step_is_restored_with_no_warning(workdir):
    warnings: list[str] = []
    state, meta, step = ckpt.restore_latest(workdir, _abstract(), log=warnings.append)
    assert (step, meta, warnings) == (3, _meta(3), [])
    np.testing.assert_array_equal(_w(state), _w(_state(3)))


def test_partial_save_is_named_never_read_and_removed(workdir):
    partial = ckpt.checkpoint_dir(workdir) / "4.orbax-checkpoint-tmp-1234"
    shutil.copytree(ckpt.checkpoint_dir(workdir) / "3", partial)
    assert ckpt.partial_saves(workdir) == [partial.name]
    warnings: list[str] = []
    state, _, step = ckpt.restore_latest(workdir, _abstract(), log=warnings.append)
    assert step == 3
    np.testing.assert_array_equal(_w(state), _w(_state(3)))
    assert len(warnings) == 1 and partial.name in warnings[0] and "never restored" in warnings[0], warnings
    # A read-only manager never deletes anything; the rerun's writing manager removes it
    # before its first save.
    assert partial.exists()
    _save(workdir, 4)
    assert ckpt.partial_saves(workdir) == []
    reader = ckpt.make_manager(workdir, read_only=True)
    try:
        assert list(reader.all_steps()) == [1, 2, 3, 4]
    finally:
        reader.close()
    assert ckpt.partial_saves(workdir / "nowhere") == []


def test_unreadable_newest_steps_are_skipped_and_set_aside_never_deleted(workdir):
    _damage(workdir, 3)
    _damage(workdir, 2)
    warnings: list[str] = []
    state, meta, step = ckpt.restore_latest(workdir, _abstract(), log=warnings.append, read_attempts=1)
    assert step == 1 and meta == _meta(1)
    np.testing.assert_array_equal(_w(state), _w(_state(1)))
    aside = workdir / ckpt.UNREADABLE_SUBDIR
    assert sorted(os.listdir(aside)) == ["2", "3"]
    assert sorted(os.listdir(ckpt.checkpoint_dir(workdir))) == ["1"]
    assert [w.split(" in ")[0] for w in warnings] == ["warning: checkpoint step 3", "warning: checkpoint step 2"]
    assert all("is missing" in w and "resuming from step 1" in w for w in warnings), warnings


def test_a_step_set_aside_again_and_again_keeps_every_copy(workdir):
    _damage(workdir, 3)
    ckpt.restore_latest(workdir, _abstract(), log=lambda _: None, read_attempts=1)
    for _ in range(2):  # the rerun saves step 3 again, and that one is damaged too
        _save(workdir, 3)
        _damage(workdir, 3)
        _, _, step = ckpt.restore_latest(workdir, _abstract(), log=lambda _: None, read_attempts=1)
        assert step == 2
    assert sorted(os.listdir(workdir / ckpt.UNREADABLE_SUBDIR)) == ["3", "3.1", "3.2"]


def test_no_readable_step_is_an_error_listing_each_and_moves_nothing(workdir):
    for step in STEPS:
        _damage(workdir, step)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*checkpoints \(step 3: .*missing.*; "
                                               r"step 2: .*; step 1: .*\); move that folder away"):
        ckpt.restore_latest(workdir, _abstract(), log=lambda _: None, read_attempts=1)
    assert sorted(os.listdir(ckpt.checkpoint_dir(workdir))) == ["1", "2", "3"]
    assert not (workdir / ckpt.UNREADABLE_SUBDIR).exists()


def test_a_transient_read_error_is_retried_with_a_warning(workdir, monkeypatch):
    real_read, calls = training._read, []

    def flaky(mngr, step, abstract_state, architecture):
        calls.append(step)
        if len(calls) == 1:
            return None, "connection reset"
        return real_read(mngr, step, abstract_state, architecture)

    monkeypatch.setattr(training, "_read", flaky)
    warnings: list[str] = []
    _, _, step = ckpt.restore_latest(workdir, _abstract(), log=warnings.append, read_attempts=3, retry_delay_s=0.0)
    assert step == 3 and calls == [3, 3]
    assert warnings == ["warning: reading checkpoint step 3 failed (connection reset); retrying (2/3)"]
    assert not (workdir / ckpt.UNREADABLE_SUBDIR).exists()

    # One attempt only: the same failure makes step 3 unreadable and step 2 is restored.
    calls.clear()
    _, _, step = ckpt.restore_latest(workdir, _abstract(), log=lambda _: None, read_attempts=1)
    assert step == 2 and calls == [3, 2]


def test_retries_wait_and_double(monkeypatch):
    sleeps: list[float] = []
    # Only this module's clock (patching time.sleep itself would reach Orbax's threads).
    monkeypatch.setattr(training, "time", types.SimpleNamespace(sleep=sleeps.append))
    monkeypatch.setattr(training, "_read", lambda *a: (None, "flaky"))
    result, reason = training._read_retrying(None, 7, None, None, 4, 0.5, lambda _: None)
    assert (result, reason) == (None, "flaky")
    assert sleeps == [0.5, 1.0, 2.0]


def test_read_meta_reads_the_record_of_the_step_asked_for(workdir):
    meta, step = ckpt.read_meta(workdir)
    assert step == 3 and meta["step"] == 3
    meta, step = ckpt.read_meta(workdir, 2)
    assert step == 2 and meta["step"] == 2
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 9 in .*checkpoints; available: \[1, 2, 3\]"):
        ckpt.read_meta(workdir, 9)
    with pytest.raises(CheckpointError, match=r"no checkpoints in .*nowhere.*; train first or fix --workdir"):
        ckpt.read_meta(workdir / "nowhere")


def test_save_interval_gates_saves_unless_forced(tmp_path):
    mngr = ckpt.make_manager(tmp_path, save_interval_steps=3, max_to_keep=2, async_checkpointing=False)
    try:
        started = [ckpt.save(mngr, s, _state(s), {"step": s}) for s in range(1, 7)]
        # Orbax always writes the first save; then every third step.
        assert started == [True, False, True, False, False, True]
        assert ckpt.save(mngr, 7, _state(7), {"step": 7}, force=True)
        assert list(mngr.all_steps()) == [6, 7]  # max_to_keep=2 rotates the oldest out
    finally:
        mngr.close()
    # The trainer's Saver keeps the interval too, unless told to force (its final save).
    saver = ckpt.Saver(ckpt.make_manager(tmp_path / "saver", save_interval_steps=3, max_to_keep=9))
    try:
        for s in range(1, 8):
            saver.save(s, _state(s), _meta(s), force=s == 7)
            saver.wait()
        assert list(saver.mngr.all_steps()) == [1, 3, 6, 7]
    finally:
        saver.close()


def test_a_failed_save_names_the_step_and_the_path(tmp_path):
    # Synchronous saves, so the failure comes back in this thread: after a failed
    # *background* save Orbax leaves threads waiting 300 s for the step's signals, which
    # would hold pytest's exit (train.py exits with os._exit; the subprocess tests of
    # test_reliability.py cover that path).
    saver = ckpt.Saver(ckpt.make_manager(tmp_path, max_to_keep=5, async_checkpointing=False))
    try:
        saver.save(1, _state(1), _meta(1), force=True)
        saver.wait()
        # The checkpoints folder becomes a file: the next save cannot be written.
        directory = ckpt.checkpoint_dir(tmp_path)
        shutil.rmtree(directory)
        directory.write_text("not a folder")
        with pytest.raises(CheckpointSaveError, match=r"checkpoint step 2 could not be written to .*checkpoints/2: [A-Za-z]+Error: \S"):
            saver.save(2, _state(2), _meta(2), force=True)
    finally:
        saver.close()
    assert directory.read_text() == "not a folder"  # nothing else written over it


def test_check_settles_a_finished_save_without_blocking(tmp_path):
    """The trainer calls `Saver.check` every step and `wait` only at the end: a finished
    background save is settled by `check` (the step committed, then its manifest
    written), with no `wait`."""
    import time

    saver = ckpt.Saver(ckpt.make_manager(tmp_path, max_to_keep=5))
    manifest = ckpt.checkpoint_dir(tmp_path) / "1" / ckpt.MANIFEST
    try:
        saver.save(1, _state(1), _meta(1), force=True)
        deadline = time.monotonic() + 60
        while not manifest.exists() and time.monotonic() < deadline:
            saver.check()
            time.sleep(0.01)
        assert manifest.exists(), "check() never settled the finished save"
        deadline = time.monotonic() + 60
        while saver._manifest is not None and time.monotonic() < deadline:
            saver.check()  # collects the finished manifest job
            time.sleep(0.01)
        assert saver._manifest is None and saver._pending is None
        assert ckpt.verify_manifest(ckpt.checkpoint_dir(tmp_path) / "1") is None

        # While a save is still being written, check() returns at once: it never waits.
        saver.save(2, _state(2), _meta(2), force=True)
        saver.mngr.wait_until_finished()
        waits: list[int] = []
        real_wait = saver.mngr.wait_until_finished
        saver.mngr.is_saving_in_progress = lambda: True
        saver.mngr.wait_until_finished = lambda: waits.append(1)
        saver.check()
        assert waits == [] and saver._pending == 2
        del saver.mngr.is_saving_in_progress, saver.mngr.wait_until_finished
        assert saver.mngr.wait_until_finished == real_wait
        saver.wait()
    finally:
        saver.close()


def test_background_failures_are_reported_with_their_step(tmp_path, monkeypatch):
    """What `Saver.wait`/`check` raise when the background work failed: Orbax's error
    (re-raised by `wait_until_finished`), a step Orbax never committed, a manifest that
    could not be written. Simulated on a real manager (a real failed background save
    leaves Orbax threads that hold the interpreter's exit; test_reliability.py covers it
    through train.py)."""
    saver = ckpt.Saver(ckpt.make_manager(tmp_path, max_to_keep=5))
    real_wait = saver.mngr.wait_until_finished
    try:
        saver.save(1, _state(1), _meta(1), force=True)
        real_wait()

        def disk_full():
            raise OSError(28, "No space left on device")

        saver.mngr.wait_until_finished = disk_full
        with pytest.raises(CheckpointSaveError, match=r"^checkpoint step 1 could not be written to .*checkpoints/1: "
                                                      r"OSError: \[Errno 28\] No space left on device$"):
            saver.wait()
        saver.mngr.wait_until_finished = real_wait

        saver.save(2, _state(2), _meta(2), force=True)
        real_wait()
        saver.mngr.all_steps = lambda: [1]  # as if step 2 never appeared
        with pytest.raises(CheckpointSaveError, match=r"^checkpoint step 2 could not be written to .*checkpoints/2: "
                                                      r"RuntimeError: Orbax did not commit it$"):
            saver.wait()
        del saver.mngr.all_steps

        def no_manifest(step_dir):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(training, "write_manifest", no_manifest)
        saver.save(3, _state(3), _meta(3), force=True)
        with pytest.raises(CheckpointSaveError, match=r"^checkpoint step 3 could not be written to .*checkpoints/3: "
                                                      r"PermissionError: \[Errno 13\] Permission denied$"):
            saver.wait()
    finally:
        saver.mngr.wait_until_finished = real_wait
        saver.close()


def test_restoring_a_damaged_step_by_number_says_so_and_how_to_go_on(workdir):
    _damage(workdir, 3)
    mngr = ckpt.make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        with pytest.raises(CheckpointError, match=r"^checkpoint .*checkpoints/3 is unreadable \(.*is missing.*\); "
                                                  r"pass --step with another checkpoint$"):
            ckpt.restore(mngr, 3, _abstract())
        state, meta = ckpt.restore(mngr, 2, _abstract())
        assert meta["step"] == 2
        np.testing.assert_array_equal(_w(state), _w(_state(2)))
    finally:
        mngr.close()


def test_a_checkpoints_folder_without_steps_is_a_fresh_start(tmp_path):
    ckpt.make_manager(tmp_path).close()  # creates checkpoints/ and writes nothing
    assert ckpt.checkpoint_dir(tmp_path).exists()
    assert ckpt.restore_latest(tmp_path, _abstract(), log=pytest.fail) is None


def test_a_crash_while_choosing_a_step_is_raised_as_it_is(workdir, monkeypatch):
    def crash(*args):
        raise MemoryError("out of host memory")

    monkeypatch.setattr(training, "_read_retrying", crash)
    with pytest.raises(MemoryError, match="out of host memory"):
        ckpt.restore_latest(workdir, _abstract(), log=lambda _: None)
    assert not (workdir / ckpt.UNREADABLE_SUBDIR).exists()


def test_manager_defaults_and_a_read_only_manager_creates_nothing(tmp_path):
    """`make_manager`'s documented defaults (keep 3, save every step, create the folder),
    and a read-only manager on a missing workdir creates nothing (research code opens
    paths that may not hold a run)."""
    mngr = ckpt.make_manager(tmp_path / "run")
    try:
        for s in range(1, 6):
            assert ckpt.save(mngr, s, _state(s), _meta(s))
            mngr.wait_until_finished()
        assert list(mngr.all_steps()) == [3, 4, 5]
    finally:
        mngr.close()
    reader = ckpt.make_manager(tmp_path / "elsewhere", read_only=True)
    try:
        assert list(reader.all_steps()) == []
    finally:
        reader.close()
    assert not (tmp_path / "elsewhere").exists()
