"""Orbax checkpoints of a training run: the `TrainState` plus the metadata record.

Layout and names: `dmformer_jax.checkpoint.layout`; the record: `.metadata` (schema
v2: the full architecture, so a checkpoint rebuilds its model without the registry).

Faults (docs/reliability.md): Orbax writes a step into ``<step>.orbax-checkpoint-tmp-*``
and renames it into place when complete, so a kill mid-write leaves only that folder;
`restore_latest` warns about it and never reads it (the writing manager then removes
it). A finished step that cannot be read (truncated or garbled files, or files that
no longer match their checksum manifest, `.manifest`) is skipped newest-first with a
warning and moved to ``WORKDIR/checkpoints_unreadable/`` (kept, never deleted), so
neither a rerun's save of that step nor ``max_to_keep`` rotation can collide with it or
count it instead of a good one.

Failed saves: `Saver` starts Orbax's asynchronous saves and raises
`CheckpointSaveError` at the next step boundary after one fails in the background
(bad path, permission denied, disk full), instead of letting the run go on unsaved.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dmformer_jax.checkpoint.layout import (
    META, PARTIAL_MARKER, STATE, UNREADABLE_SUBDIR, checkpoint_dir,
)
from dmformer_jax.checkpoint import metadata
from dmformer_jax.checkpoint.manifest import verify_manifest, write_manifest
from dmformer_jax.errors import CheckpointError, CheckpointSaveError, first_line
from dmformer_jax.models import legacy
from dmformer_jax.paths import resolve

def _handlers() -> dict[str, Any]:
    # Explicit handlers (not just item names) so item_metadata can read a step's tree
    # before anything was saved or restored by this manager.
    return {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()}


def make_manager(
    workdir: str,
    *,
    max_to_keep: int = 3,
    save_interval_steps: int = 1,
    async_checkpointing: bool = True,
    create: bool = True,
    read_only: bool = False,
    local: bool = False,
) -> ocp.CheckpointManager:
    """A `CheckpointManager` over ``WORKDIR/checkpoints`` keeping ``max_to_keep``.

    ``save_interval_steps`` gates `save` unless it is forced (final/preemption saves).
    A writing manager removes partial saves left by a killed run
    (``<step>.orbax-checkpoint-tmp*``) when it opens; call `restore_latest` first,
    which names them in a warning. ``read_only``: never writes or deletes anything.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,  # read_only would warn about it
        save_interval_steps=0 if read_only else save_interval_steps,
        enable_async_checkpointing=async_checkpointing,
        create=create and not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
    )
    if local and read_only and jax.process_count() > 1:
        options.multiprocessing_options = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}
        )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=_handlers())


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
    """Starts saving ``state`` and ``meta`` as ``step`` (asynchronously when enabled).

    Returns whether a save was started (the manager skips steps between intervals
    unless ``force``). Call ``mngr.wait_until_finished()`` before the process exits.
    """
    return mngr.save(
        step,
        args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
        force=force,
    )


class Saver:
    """Saves through ``mngr`` and reports a failed save at the next step boundary.

    Orbax writes in a background thread and keeps its error until the manager is next
    waited on, so a run would otherwise train on, unsaved, until it ends. Call `check`
    every step (it returns at once while a save is running), and `wait` before the
    process exits. After a step is committed, process 0 writes its manifest in a
    background thread.
    """

    def __init__(self, mngr: ocp.CheckpointManager):
        self.mngr = mngr
        self._pending: int | None = None  # the step being written, until checked
        self._chief = jax.process_index() == 0
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, "dmformer_manifest") if self._chief else None
        self._manifest: tuple[int, concurrent.futures.Future] | None = None

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> None:
        """Starts saving ``step`` (skipped between save intervals unless ``force``).

        Raises:
          CheckpointSaveError: this save, or an earlier one, could not be written.
        """
        self.check()
        self._wait_manifest()  # rotation may delete a step whose manifest is being hashed
        try:
            started = save(self.mngr, step, state, meta, force=force)
        except Exception as e:  # noqa: BLE001  (synchronous saves fail here)
            raise self._failed(step, e) from None
        if started:
            self._pending = step

    def check(self) -> None:
        """Raises `CheckpointSaveError` if a finished save failed; never blocks on a running one."""
        if self._pending is not None and not self.mngr.is_saving_in_progress():
            self._settle()
        if self._manifest is not None and self._manifest[1].done():
            self._wait_manifest()

    def wait(self) -> None:
        """Blocks until the current save and its manifest are written; raises if either failed."""
        if self._pending is not None:
            self._settle()
        self._wait_manifest()

    def close(self) -> None:
        """Waits for what is still running (errors were, or are being, reported) and closes."""
        try:
            self.mngr.wait_until_finished()
        except Exception:  # noqa: BLE001
            pass
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
        self.mngr.close()

    def _settle(self) -> None:
        step, self._pending = self._pending, None
        try:
            self.mngr.wait_until_finished()  # returns at once when done; re-raises its error
        except Exception as e:  # noqa: BLE001
            raise self._failed(step, e) from None
        if step not in self.mngr.all_steps():
            raise self._failed(step, RuntimeError("Orbax did not commit it"))
        if self._chief:
            self._manifest = (step, self._hasher.submit(write_manifest, self._step_dir(step)))

    def _wait_manifest(self) -> None:
        if self._manifest is None:
            return
        (step, future), self._manifest = self._manifest, None
        try:
            future.result()
        except Exception as e:  # noqa: BLE001
            raise self._failed(step, e) from None

    def _step_dir(self, step: int) -> epath.Path:
        return epath.Path(self.mngr.directory) / str(step)

    def _failed(self, step: int, cause: BaseException) -> CheckpointSaveError:
        where = os.fspath(self._step_dir(step))
        return CheckpointSaveError(f"checkpoint step {step} could not be written to {where}: "
                                   f"{type(cause).__name__}: {first_line(cause)}")


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
    """The newest finished checkpoint's step, or None when there is none."""
    return mngr.latest_step()


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{'params/stage_0_block_0/.../kernel': shape}`` of a state or its saved metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _mismatch(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
    """The first difference between two path->shape maps (params first), or None."""
    order = sorted(set(saved) | set(wanted), key=lambda p: (not p.startswith("params/"), p))
    for path in order:
        if path not in saved:
            return f"{path} is missing from the checkpoint"
        if path not in wanted:
            return f"{path} is in the checkpoint but not in this run's model/optimizer"
        if saved[path] != wanted[path]:
            return f"{path} has shape {saved[path]} in the checkpoint but {wanted[path]} in this run"
    return None


def _architecture(meta: dict) -> dict | None:
    try:
        return metadata.upgrade(meta)["architecture"]
    except Exception:  # noqa: BLE001  (unreadable metadata: not the same model)
        return None


def _read(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, architecture: dict | None):
    """``(state, meta)`` of ``step``; None plus the reason when the files are unreadable.

    Raises:
      CheckpointError: the checkpoint is readable but of another model or optimizer.
    """
    directory = os.fspath(mngr.directory)
    damage = verify_manifest(epath.Path(mngr.directory) / str(step))
    if damage is not None:
        return None, damage
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        if not isinstance(meta, dict):
            raise ValueError(f"the {META} item is not a JSON object")
        saved = _shapes(mngr.item_metadata(step)[STATE])
    except Exception as e:  # noqa: BLE001  (any failure to read is corruption)
        return None, first_line(e)
    # A run written before the backbone/heads split (v1 names, params/stem/...) resumed
    # by today's model (params/backbone/stem/...): restore it with the v1 layout of
    # this run's tree, then rename to today's.
    wanted = _shapes(abstract_state)
    v1 = any(p.startswith("params/stem/") for p in saved) and any(p.startswith("params/backbone/") for p in wanted)
    target = legacy.to_v1_tree(abstract_state) if v1 else abstract_state
    problem = _mismatch(saved, _shapes(target) if v1 else wanted)
    if problem is not None:
        if architecture is not None and _architecture(meta) == architecture:
            # Written by this very model, yet its tree does not fit: damaged metadata.
            return None, f"its array metadata does not match its own model ({problem})"
        raise CheckpointError(
            f"checkpoint {directory}/{step} is of another model or optimizer ({metadata.describe(meta)}): "
            f"{problem}; use a fresh --workdir or the config it was trained with"
        )
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
            ),
        )
    except Exception as e:  # noqa: BLE001
        return None, first_line(e)
    state = legacy.remap_v1_tree(restored[STATE]) if v1 else restored[STATE]
    return (state, restored[META]), None


def _set_aside(workdir: str, step: int) -> epath.Path:
    """Moves unreadable ``checkpoints/<step>`` to ``checkpoints_unreadable/<step>[.n]``."""
    target_dir = epath.Path(resolve(workdir)) / UNREADABLE_SUBDIR
    target = target_dir / str(step)
    n = 1
    while target.exists():
        target, n = target_dir / f"{step}.{n}", n + 1
    if jax.process_index() == 0:
        target_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir(workdir) / str(step)).rename(target)
    return target


def partial_saves(workdir: str) -> list[str]:
    """Names of interrupted saves (``<step>.orbax-checkpoint-tmp-*``) in ``workdir``."""
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if PARTIAL_MARKER in p.name)


# Codes process 0 broadcasts instead of a step when there is nothing to restore.
_NONE, _NO_READABLE, _OTHER_MODEL, _FAILED = -1, -2, -3, -4


def _from_chief(value: int) -> int:
    """Process 0's ``value``, on every process (identity with one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def _gathered(value: int) -> list[int]:
    """Every process's ``value``, in process order."""
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int64)))]


def _read_retrying(mngr, step: int, abstract_state: Any, architecture: dict | None, attempts: int,
                   delay_s: float, log: Callable[[str], None]):
    """`_read`, tried up to ``attempts`` times (waits ``delay_s``, then doubling)."""
    reason = None
    for attempt in range(1, max(1, attempts) + 1):
        result, reason = _read(mngr, step, abstract_state, architecture)
        if result is not None:
            return result, None
        if attempt < attempts:
            log(f"warning: reading checkpoint step {step} failed ({reason}); retrying ({attempt + 1}/{attempts})")
            time.sleep(delay_s * 2 ** (attempt - 1))
    return None, reason


def restore_latest(
    workdir: str,
    abstract_state: Any,
    *,
    architecture: dict | None = None,
    log: Callable[[str], None] = print,
    read_attempts: int = 3,
    retry_delay_s: float = 1.0,
) -> tuple[Any, dict, int] | None:
    """``(state, meta, step)`` of the newest readable checkpoint; None when there is none.

    Reads without creating anything. Partial saves are named in a warning and never
    read. Finished steps that cannot be read are tried newest-first; once a readable
    one is found, the unreadable newer ones are moved to ``checkpoints_unreadable/``
    (with a warning each), so the run continues from the newest readable step.

    With several processes the decision is process 0's alone: it lists the steps and
    reads them newest-first (each up to ``read_attempts`` times, a transient error is
    retried), then every process is given that step (``broadcast_one_to_all``) and
    reads it, with the same retries. If any process still cannot read it, every
    process raises `CheckpointError` (nothing is moved). All processes then meet at a
    barrier and assert they restored the same step: the replicated state never
    differs between hosts.

    Args:
      workdir: the run directory.
      abstract_state: restore target, a pytree of ``jax.ShapeDtypeStruct`` with
        shardings (`dmformer_jax.train.state.abstract_train_state`).
      architecture: this run's ``record['architecture']``; a step written by the same
        architecture whose tree still does not fit counts as damaged instead of as
        another model.
      log: where warnings go (one line each).
      read_attempts: reads of one step before it counts as unreadable.
      retry_delay_s: wait before the first retry (doubled for each further one).

    Raises:
      CheckpointError: the newest readable checkpoint is of another model/optimizer
        (named by parameter path), no checkpoint is readable (nothing is moved), or
        a step process 0 read is unreadable on another process.
    """
    directory = checkpoint_dir(workdir)
    chief = jax.process_index() == 0
    if not _from_chief(int(directory.exists())):
        return None
    if chief:
        for name in partial_saves(workdir):
            log(f"warning: ignoring partial checkpoint {directory / name} (a save cut short by a kill or crash); "
                "it is never restored and is removed now")
    mngr = make_manager(workdir, read_only=True, async_checkpointing=False, local=True)
    try:
        result, unreadable, problem = None, [], None
        decision = _NONE
        if chief:
            try:
                for step in sorted(mngr.all_steps(), reverse=True):
                    result, reason = _read_retrying(mngr, step, abstract_state, architecture, read_attempts,
                                                    retry_delay_s, log)
                    if result is not None:
                        decision = step
                        break
                    unreadable.append((step, reason))
                else:
                    decision = _NO_READABLE if unreadable else _NONE
            except CheckpointError as e:
                decision, problem = _OTHER_MODEL, e
            except BaseException as e:  # the others must not wait for a decision forever
                decision, problem = _FAILED, e
        step = _from_chief(decision)
        if problem is not None:
            raise problem
        if step == _OTHER_MODEL:
            raise CheckpointError(f"the newest checkpoint in {directory} is of another model or optimizer "
                                  "(process 0 names it); use a fresh --workdir or the config it was trained with")
        if step == _FAILED:
            raise CheckpointError(f"process 0 failed while choosing a checkpoint in {directory}; see its error")
        if step == _NO_READABLE:
            if chief:
                details = "; ".join(f"step {s}: {why}" for s, why in unreadable)
                raise CheckpointError(
                    f"no readable checkpoint in {directory} ({details}); move that folder away to start from scratch"
                )
            raise CheckpointError(f"no readable checkpoint in {directory} (process 0 lists why)")
        if step == _NONE:
            return None
        reason = None
        if not chief:
            result, reason = _read_retrying(mngr, step, abstract_state, architecture, read_attempts, retry_delay_s, log)
        failed = [i for i, ok in enumerate(_gathered(int(result is not None))) if not ok]
        if failed:
            why = f" ({reason})" if reason else ""
            raise CheckpointError(
                f"checkpoint step {step} in {directory}, chosen by process 0, is unreadable on process(es) "
                f"{failed}{why}; nothing was moved: rerun, and check that every host sees the same workdir"
            )
        for bad, why in unreadable:  # process 0 only: the others never saw them
            moved = _set_aside(workdir, bad)
            log(f"warning: checkpoint step {bad} in {directory} is unreadable ({why}); moved it to {moved} "
                f"and resuming from step {step}")
        state, meta = result
    finally:
        mngr.close()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("dmformer_checkpoint_restored")
        multihost_utils.assert_equal(
            np.asarray(int(meta.get("step", step)), np.int64),
            f"processes restored different checkpoint steps from {directory}",
        )
    return state, meta, step


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """``(state, meta)`` of checkpoint ``step``, laid out as ``abstract_state``.

    Raises:
      CheckpointError: the checkpoint does not fit ``abstract_state`` (another variant
        or number of classes, named by parameter path) or cannot be read.
    """
    result, reason = _read(mngr, step, abstract_state, None)
    if result is None:
        raise CheckpointError(f"checkpoint {mngr.directory}/{step} is unreadable ({reason}); "
                              "pass --step with another checkpoint")
    return result


def read_meta(workdir: str, step: int | None = None) -> tuple[dict, int]:
    """``(record, step)`` of checkpoint ``step`` (default: the newest) without the state;
    the record upgraded to schema v2 (`dmformer_jax.checkpoint.metadata`).

    Raises:
      CheckpointError: no checkpoint in ``workdir``.
    """
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        raise CheckpointError(f"no checkpoints in {os.fspath(directory)}; train first or fix --workdir")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False), item_names=(STATE, META))
    try:
        step = mngr.latest_step() if step is None else step
        if step is None or step not in mngr.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {os.fspath(directory)}; available: {mngr.all_steps()}"
            )
        meta = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    finally:
        mngr.close()
    return metadata.upgrade(meta), step
