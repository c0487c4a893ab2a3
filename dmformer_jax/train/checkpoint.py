"""Orbax checkpoints of a run: the `TrainState` plus a JSON metadata item.

Layout: ``WORKDIR/checkpoints/<step>/{state,meta}``. ``meta`` says how to rebuild the
model (variant name, `create_model` overrides, num_classes, image size, mean/std,
crop_pct) and holds the run's config, so a checkpoint is usable without its config file
(`dmformer_jax.eval`, `dmformer_jax.load`).
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from dmformer_jax.errors import CheckpointError

STATE, META = "state", "meta"
CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(workdir: str) -> epath.Path:
    """Where the checkpoints of ``workdir`` live (local path or ``gs://``)."""
    return epath.Path(workdir) / CHECKPOINT_SUBDIR


def make_manager(
    workdir: str,
    *,
    max_to_keep: int = 3,
    save_interval_steps: int = 1,
    async_checkpointing: bool = True,
    create: bool = True,
) -> ocp.CheckpointManager:
    """A `CheckpointManager` over ``WORKDIR/checkpoints`` keeping ``max_to_keep``.

    ``save_interval_steps`` gates `save` unless it is forced (final/preemption saves).
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_checkpointing,
        create=create,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=(STATE, META))


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


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """``(state, meta)`` of checkpoint ``step``, laid out as ``abstract_state``.

    ``abstract_state``: a pytree of ``jax.ShapeDtypeStruct`` with shardings (see
    `dmformer_jax.train.state.abstract_train_state`).

    Raises:
      CheckpointError: the checkpoint does not fit ``abstract_state`` (another variant
        or number of classes) or cannot be read.
    """
    try:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
            ),
        )
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {mngr.directory}/{step} does not match this run's model/optimizer "
            f"({first[:200]}); use a fresh --workdir or the config it was trained with"
        ) from None
    return restored[STATE], restored[META]


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict, int] | None:
    """``(state, meta, step)`` of the newest checkpoint, or None when there is none."""
    step = latest_step(mngr)
    if step is None:
        return None
    state, meta = restore(mngr, step, abstract_state)
    return state, meta, step


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
