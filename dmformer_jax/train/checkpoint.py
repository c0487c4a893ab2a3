"""Orbax checkpoints of a run: the `TrainState` plus a JSON metadata item.

Layout: ``WORKDIR/checkpoints/<step>/{state,meta}``. ``meta`` says how to rebuild the
model (variant name, `create_model` overrides, num_classes, image size, mean/std,
crop_pct) and holds the run's config, so a checkpoint is usable without its config file
(`dmformer_jax.eval`, `dmformer_jax.load`).

Faults (docs/reliability.md): Orbax writes a step into ``<step>.orbax-checkpoint-tmp-*``
and renames it into place when complete, so a kill mid-write leaves only that folder;
`restore_latest` warns about it and never reads it (the writing manager then removes
it). A finished step that cannot be read (truncated or garbled files) is skipped
newest-first with a warning and moved to ``WORKDIR/checkpoints_unreadable/`` (kept,
never deleted), so neither a rerun's save of that step nor ``max_to_keep`` rotation
can collide with it or count it instead of a good one.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from dmformer_jax.errors import CheckpointError

STATE, META = "state", "meta"
CHECKPOINT_SUBDIR = "checkpoints"
UNREADABLE_SUBDIR = "checkpoints_unreadable"
PARTIAL_MARKER = ".orbax-checkpoint-tmp"


def checkpoint_dir(workdir: str) -> epath.Path:
    """Where the checkpoints of ``workdir`` live (local path or ``gs://``)."""
    return epath.Path(workdir) / CHECKPOINT_SUBDIR


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


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
    """The newest finished checkpoint's step, or None when there is none."""
    return mngr.latest_step()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


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


def _describe_model(meta: dict) -> str:
    model = meta.get("model", {})
    kwargs = model.get("kwargs", {})
    extra = "".join(f", {k} {tuple(kwargs[k])}" for k in ("widths", "depths") if k in kwargs)
    return f"{model.get('name')}{extra}, {meta.get('num_classes')} classes"


def _read(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, model: dict | None):
    """``(state, meta)`` of ``step``; None plus the reason when the files are unreadable.

    Raises:
      CheckpointError: the checkpoint is readable but of another model or optimizer.
    """
    directory = os.fspath(mngr.directory)
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        if not isinstance(meta, dict):
            raise ValueError(f"the {META} item is not a JSON object")
        saved = _shapes(mngr.item_metadata(step)[STATE])
    except Exception as e:  # noqa: BLE001  (any failure to read is corruption)
        return None, _first_line(e)
    problem = _mismatch(saved, _shapes(abstract_state))
    if problem is not None:
        if model is not None and meta.get("model") == model:
            # Written by this very model, yet its tree does not fit: damaged metadata.
            return None, f"its array metadata does not match its own model ({problem})"
        raise CheckpointError(
            f"checkpoint {directory}/{step} is of another model or optimizer ({_describe_model(meta)}): "
            f"{problem}; use a fresh --workdir or the config it was trained with"
        )
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
            ),
        )
    except Exception as e:  # noqa: BLE001
        return None, _first_line(e)
    return (restored[STATE], restored[META]), None


def _set_aside(workdir: str, step: int) -> epath.Path:
    """Moves unreadable ``checkpoints/<step>`` to ``checkpoints_unreadable/<step>[.n]``."""
    target_dir = epath.Path(workdir) / UNREADABLE_SUBDIR
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


def restore_latest(
    workdir: str,
    abstract_state: Any,
    *,
    model: dict | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Any, dict, int] | None:
    """``(state, meta, step)`` of the newest readable checkpoint; None when there is none.

    Reads without creating anything. Partial saves are named in a warning and never
    read. Finished steps that cannot be read are tried newest-first; once a readable
    one is found, the unreadable newer ones are moved to ``checkpoints_unreadable/``
    (with a warning each), so the run continues from the newest readable step.

    Args:
      workdir: the run directory.
      abstract_state: restore target, a pytree of ``jax.ShapeDtypeStruct`` with
        shardings (`dmformer_jax.train.state.abstract_train_state`).
      model: this run's ``meta['model']``; a step written by the same model whose
        tree still does not fit counts as damaged instead of as another model.
      log: where warnings go (one line each).

    Raises:
      CheckpointError: the newest readable checkpoint is of another model/optimizer
        (named by parameter path), or no checkpoint is readable (nothing is moved).
    """
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        return None
    for name in partial_saves(workdir):
        log(f"warning: ignoring partial checkpoint {directory / name} (a save cut short by a kill or crash); "
            "it is never restored and is removed now")
    mngr = make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        steps = sorted(mngr.all_steps(), reverse=True)
        unreadable: list[tuple[int, str]] = []
        for step in steps:
            result, reason = _read(mngr, step, abstract_state, model)
            if result is None:
                unreadable.append((step, reason))
                continue
            for bad, why in unreadable:
                moved = _set_aside(workdir, bad)
                log(f"warning: checkpoint step {bad} in {directory} is unreadable ({why}); moved it to {moved} "
                    f"and resuming from step {step}")
            if unreadable and jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("dmformer_checkpoint_set_aside")
            state, meta = result
            return state, meta, step
    finally:
        mngr.close()
    if unreadable:
        details = "; ".join(f"step {s}: {why}" for s, why in unreadable)
        raise CheckpointError(
            f"no readable checkpoint in {directory} ({details}); move that folder away to start from scratch"
        )
    return None


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
    """``(meta, step)`` of checkpoint ``step`` (default: the newest) without the state.

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
    return meta, step
