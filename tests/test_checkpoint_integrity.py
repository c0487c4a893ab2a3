"""Checksum manifests: a flipped byte that Orbax still reads is caught on restore.

Fast, in-process: a tiny pytree saved through `checkpoint.Saver` (the trainer's save
path), one byte of a committed step flipped, then `restore_latest` as a rerun calls it.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dmformer_jax import checkpoint as ckpt

STEPS = (1, 2)


def _state(step: int) -> dict:
    # Random (incompressible) values: Orbax stores them as a raw zstd block, so a
    # flipped byte changes one value and decompression still succeeds.
    rng = np.random.default_rng(step)
    return {"params": {"w": jnp.asarray(rng.standard_normal(4096), jnp.float32)}, "step": jnp.array(step)}


def _abstract() -> dict:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), _state(0))


@pytest.fixture
def workdir(tmp_path):
    saver = ckpt.Saver(ckpt.make_manager(tmp_path, max_to_keep=5))
    try:
        for step in STEPS:
            saver.save(step, _state(step), {"step": step}, force=True)
            saver.wait()
    finally:
        saver.close()
    return tmp_path


def _largest_data_file(step_dir) -> str:
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if os.sep + "d" + os.sep in os.path.join(r, f)]
    return max(files, key=os.path.getsize)


def _flip_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def test_every_committed_step_has_a_manifest_of_all_its_files(workdir):
    for step in STEPS:
        step_dir = ckpt.checkpoint_dir(workdir) / str(step)
        manifest = json.loads((step_dir / ckpt.MANIFEST).read_text())
        on_disk = sorted(os.path.relpath(os.path.join(r, f), step_dir)
                         for r, _, fs in os.walk(step_dir) for f in fs if f != ckpt.MANIFEST)
        assert sorted(manifest["files"]) == on_disk
        assert ckpt.verify_manifest(step_dir) is None


def test_flipped_byte_is_readable_by_orbax_but_caught_by_the_manifest(workdir):
    step_dir = ckpt.checkpoint_dir(workdir) / "2"
    _flip_byte(_largest_data_file(step_dir))

    # Without the manifest the damage goes unnoticed: Orbax restores different values.
    with ocp.StandardCheckpointer() as reader:
        silently_wrong = reader.restore(step_dir / ckpt.STATE, _abstract())
    assert not np.array_equal(np.asarray(silently_wrong["params"]["w"]), np.asarray(_state(2)["params"]["w"]))

    assert "SHA-256" in ckpt.verify_manifest(step_dir)
    warnings: list[str] = []
    state, meta, step = ckpt.restore_latest(workdir, _abstract(), log=warnings.append, read_attempts=1)
    assert step == 1 and meta == {"step": 1}
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.asarray(_state(1)["params"]["w"]))
    assert len(warnings) == 1 and "step 2" in warnings[0] and "SHA-256" in warnings[0], warnings
    # Reported and kept, never deleted: moved aside with its manifest.
    moved = workdir / ckpt.UNREADABLE_SUBDIR / "2"
    assert (moved / ckpt.MANIFEST).exists() and not step_dir.exists()


def test_missing_or_added_files_are_caught(workdir):
    step_dir = ckpt.checkpoint_dir(workdir) / "1"
    os.remove(os.path.join(step_dir, "meta", "metadata"))
    assert "meta/metadata is missing" in ckpt.verify_manifest(step_dir)
    step_dir = ckpt.checkpoint_dir(workdir) / "2"
    (step_dir / "state" / "stray").write_text("x")
    assert "state/stray is not in" in ckpt.verify_manifest(step_dir)


def test_step_without_manifest_is_read_unverified(workdir):
    # Checkpoints written before manifests existed still load.
    step_dir = ckpt.checkpoint_dir(workdir) / "2"
    os.remove(step_dir / ckpt.MANIFEST)
    state, _, step = ckpt.restore_latest(workdir, _abstract(), log=lambda m: None)
    assert step == 2
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.asarray(_state(2)["params"]["w"]))


def test_research_load_refuses_a_damaged_step(workdir):
    import dmformer_jax
    from dmformer_jax.errors import CheckpointError

    _flip_byte(_largest_data_file(ckpt.checkpoint_dir(workdir) / "2"))
    with pytest.raises(CheckpointError, match=r"checkpoints/2 is damaged \(.*SHA-256"):
        dmformer_jax.load(workdir, step=2)
