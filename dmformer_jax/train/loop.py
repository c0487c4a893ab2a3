"""The training loop: restore or init, train, evaluate, checkpoint, stop cleanly.

`train_and_evaluate` is what ``train.py`` runs; `evaluate_checkpoint` is the eval-only
mode. Both take the data module as an argument (default `dmformer_jax.data`) so tests
can substitute synthetic data with the same API.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import signal
import threading
import time
from types import ModuleType
from typing import Any, Iterator, Mapping

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from dmformer_jax import checkpoint as ckpt
from dmformer_jax import recipe
from dmformer_jax.errors import CheckpointError, ConfigError
from dmformer_jax.paths import resolve
from dmformer_jax.train import mesh as mesh_lib
from dmformer_jax.train import optim
from dmformer_jax.train import state as state_lib
from dmformer_jax.train import step as step_lib
from dmformer_jax.train.logger import MetricsWriter, format_eta, log, log_all_processes, progress_line

# 128 + SIGTERM: what schedulers expect from a job that stopped because it was told to.
PREEMPTED_EXIT_CODE = 143


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class Preempted(Exception):
    """The run saved its current step after SIGTERM and stopped (resume by rerunning)."""

    def __init__(self, step: int, workdir: str):
        super().__init__(
            f"preempted at step {step}: checkpoint saved in {ckpt.checkpoint_dir(workdir)}; "
            "rerun the same command to resume"
        )
        self.step = step


@dataclasses.dataclass
class RunResult:
    """What a finished (or stopped) run reports."""

    step: int
    eval_metrics: dict[str, float] | None
    stopped_early: bool = False


def _data_module(data: ModuleType | None) -> ModuleType:
    if data is not None:
        return data
    import dmformer_jax.data as data_lib  # late: it imports TensorFlow

    return data_lib


# ----------------------------------------------------------------------------- config


def _suggest(batch: int, multiple: int) -> int:
    return max(multiple, int(math.ceil(batch / multiple)) * multiple)


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """The global eval batch (``eval_batch_size``, or ``batch_size`` when None)."""
    return int(config.eval_batch_size if config.eval_batch_size is not None else config.batch_size)


def validate_config(config: ml_collections.ConfigDict, *, device_count: int, process_count: int) -> None:
    """Raises `ConfigError` (one line: the problem and a fix) for an unusable config."""
    for name, value in (("batch_size", int(config.batch_size)), ("eval_batch_size", eval_batch_size(config))):
        if value <= 0:
            raise ConfigError(f"config.{name}={value} must be positive")
        if value % device_count or value % process_count:
            raise ConfigError(
                f"config.{name}={value} is not divisible by the {device_count} devices of "
                f"{process_count} process(es); use e.g. --config.{name}={_suggest(value, device_count)}"
            )
    positive = {
        "optim.grad_accum_steps": config.optim.grad_accum_steps,
        "log_every_steps": config.log_every_steps,
        "checkpoint_every_steps": config.checkpoint_every_steps,
        "eval_every_steps": config.eval_every_steps,
        "keep_checkpoints": config.keep_checkpoints,
        "data.image_size": config.data.image_size,
    }
    if config.num_train_steps is not None:
        positive["num_train_steps"] = config.num_train_steps
    for name, value in positive.items():
        if int(value) <= 0:
            raise ConfigError(f"config.{name}={value} must be a positive integer")
    if config.num_train_steps is None and config.num_epochs <= 0:
        raise ConfigError(f"config.num_epochs={config.num_epochs} must be positive (or set num_train_steps)")
    for name in ("image_size", "eval_image_size"):
        size = config.data.get(name)
        if size is not None and int(size) % 32:
            raise ConfigError(
                f"config.data.{name}={size}: DMFormer needs sides divisible by 32; "
                f"use e.g. --config.data.{name}={_suggest(int(size), 32)}"
            )
    decay = config.optim.ema_decay
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ConfigError(f"config.optim.ema_decay={decay} must be in [0, 1) (e.g. 0.9999), or None for no EMA")
    if config.optim.grad_clip_norm is not None and config.optim.grad_clip_norm <= 0:
        raise ConfigError(f"config.optim.grad_clip_norm={config.optim.grad_clip_norm} must be positive or None")
    state_lib.compute_dtype(config)


def check_multiprocess() -> None:
    """Raises `ConfigError` when several processes run without JAX's distributed client.

    libtpu forms a multi-host slice by itself, but Orbax's multi-process checkpoints and
    JAX's preemption notice need ``jax.distributed.initialize()``.
    """
    if jax.process_count() > 1 and not jax.distributed.is_initialized():
        raise ConfigError(
            f"{jax.process_count()} processes but jax.distributed is not initialised (checkpoints "
            "and preemption need it); run with --config.distributed=auto (the default) or True, "
            "and set config.coordinator_address/num_processes/process_id if JAX cannot detect the cluster"
        )


# Config fields that hold a user-typed path (made absolute, URLs kept; see paths.py).
CONFIG_PATH_FIELDS = ("init_from", "data.data_dir", "data.manual_dir", "compilation_cache_dir")


def resolve_config_paths(config: ml_collections.ConfigDict) -> None:
    """Makes every set path field of ``config`` (`CONFIG_PATH_FIELDS`) absolute, in place,
    so the checkpointed config means the same from any working directory."""
    for key in CONFIG_PATH_FIELDS:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part)
        if node is not None and node.get(leaf):
            node[leaf] = resolve(node[leaf])


# ----------------------------------------------------------------------------- helpers


def checkpoint_meta(
    config: ml_collections.ConfigDict, num_classes: int, step: int
) -> dict[str, Any]:
    """The metadata record (schema v2) saved with every checkpoint: rebuilds the model."""
    import json

    model = state_lib.build_model(config, num_classes)  # with the dtype this run computes in
    crop_pct = recipe.eval_crop_pct(config.data.crop_pct, config.model.name)
    return ckpt.metadata.record(
        model,
        image_size=int(config.data.image_size),
        eval_image_size=int(config.data.eval_image_size or config.data.image_size),
        crop_pct=crop_pct,
        mean=config.data.mean,
        std=config.data.std,
        dataset=config.data.name,
        step=step,
        ema=config.optim.ema_decay is not None,
        config=json.loads(config.to_json_best_effort()),
    )


class _SigtermFlag:
    """Records SIGTERM instead of dying, so the loop can save and exit cleanly.

    Single-process only: with several processes JAX's own preemption notifier (via
    ``multihost_utils.reached_preemption_sync_point``) makes every process agree on
    the step to stop at.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous = None

    def __enter__(self) -> "_SigtermFlag":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def preempted(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.event.is_set()


def _pad_eval_batch(local: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Pads a short local eval batch to ``size`` rows with masked-out examples."""
    n = len(local["mask"])
    if n == size:
        return dict(local)
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        pad = np.zeros((size - n, *value.shape[1:]), value.dtype)
        out[key] = np.concatenate([value, pad])
    return out


def run_evaluation(
    config: ml_collections.ConfigDict, state: Any, eval_step, mesh, data: ModuleType
) -> dict[str, float]:
    """Top-1/top-5 (fractions) and loss over the whole eval split (padding masked)."""
    local_size = eval_batch_size(config) // jax.process_count()
    totals = None
    for local in data.make_eval_iterator(
        config, process_index=jax.process_index(), process_count=jax.process_count()
    ):
        batch = mesh_lib.global_batch(mesh, _pad_eval_batch(local, local_size))
        sums = eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    if totals is None:
        raise ConfigError(f"the eval split of {config.data.name!r} yielded no batches")
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "top1": float(totals["top1"]) / count,
        "top5": float(totals["top5"]) / count,
        "loss": float(totals["loss"]) / count,
        "num_examples": count,
    }


@dataclasses.dataclass
class _Setup:
    model: Any
    tx: Any
    schedule: Any
    plan: optim.StepPlan
    mesh: Any
    abstract_state: Any
    num_classes: int


def _setup(config: ml_collections.ConfigDict, num_classes: int, num_train_examples: int) -> _Setup:
    model = state_lib.build_model(config, num_classes)
    plan = optim.plan_steps(config, num_train_examples)
    tx, schedule = optim.make_optimizer(config, plan)
    mesh = mesh_lib.make_mesh()
    abstract = state_lib.abstract_train_state(
        model, tx, image_size=int(config.data.image_size), seed=int(config.seed),
        use_ema=config.optim.ema_decay is not None, mesh=mesh,
    )
    return _Setup(model, tx, schedule, plan, mesh, abstract, num_classes)


def _transfer_dtype(data: ModuleType, config) -> str:
    """How images travel to the device: ``'uint8'`` (normalised there) or ``'float32'``."""
    return getattr(data, "transfer_dtype", lambda c: "float32")(config)


def enable_compilation_cache(config) -> str | None:
    """Turns on JAX's persistent compilation cache in ``config.compilation_cache_dir``
    (a local folder or ``gs://...``; None leaves JAX's own settings, e.g. the
    ``JAX_COMPILATION_CACHE_DIR`` environment variable, alone). Returns the folder."""
    path = config.get("compilation_cache_dir")
    if not path:
        return None
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        try:  # JAX decides once, at the first compile, whether a cache is used
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except (ImportError, AttributeError):
            pass
    return path


def _ahead_of_time(jitted, *abstract_args):
    """``(step, seconds)``: ``jitted`` compiled now for ``abstract_args``; the returned
    function runs that executable, falling back to ``jitted`` for other argument types."""
    t0 = time.time()
    compiled = jitted.lower(*abstract_args).compile()
    seconds = time.time() - t0

    def step(*args):
        try:
            return compiled(*args)
        except (TypeError, ValueError):  # argument types the executable was not built for
            return jitted(*args)

    return step, seconds


def _wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """Holds every process until all arrive, through the coordination service (not a
    device collective, which would time out while a slow process is still compiling)."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # cannot happen after check_multiprocess; keep a working barrier
        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def _eval_batch_spec(config, mesh, data) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes `run_evaluation` feeds the eval step (for ahead-of-time compiling)."""
    size = int(config.data.eval_image_size or config.data.image_size)
    batch = eval_batch_size(config)
    sharding = mesh_lib.batch_sharded(mesh)
    image = np.uint8 if _transfer_dtype(data, config) == "uint8" else np.float32
    return {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), image, sharding=sharding),
        "label": jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharding),
        "mask": jax.ShapeDtypeStruct((batch,), np.bool_, sharding=sharding),
    }


def _state_sharding(abstract_state: Any) -> Any:
    return jax.tree.map(lambda s: s.sharding, abstract_state)


# ----------------------------------------------------------------------------- train


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, data: ModuleType | None = None
) -> RunResult:
    """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if any.

    Raises:
      UserError: bad config/data/checkpoint (nothing in ``workdir`` is changed by a
        config error).
      TrainingDivergedError: NaN/Inf loss; newer checkpoints are not written.
      Preempted: SIGTERM; the current step was checkpointed.
    """
    data = _data_module(data)
    workdir = resolve(workdir)
    resolve_config_paths(config)
    check_multiprocess()
    validate_config(config, device_count=jax.device_count(), process_count=jax.process_count())
    log_all_processes(bool(config.get("log_all_processes", False)))
    cache = enable_compilation_cache(config)
    if cache:
        log(f"persistent compilation cache: {cache}")
    info = data.dataset_info(config)
    s = _setup(config, info.num_classes, info.num_train_examples)
    total = s.plan.total_steps
    state_sharding = _state_sharding(s.abstract_state)

    # Restore (or initialise) before the manager exists: every checkpoint or init_from
    # error is raised before anything in the workdir is created or changed.
    state, start = _restore_or_init(config, workdir, s)
    saver = ckpt.Saver(ckpt.make_manager(
        workdir,
        max_to_keep=int(config.keep_checkpoints),
        save_interval_steps=int(config.checkpoint_every_steps),
        async_checkpointing=bool(config.async_checkpointing),
    ))
    try:
        result = _train(config, workdir, data, info, s, saver, state_sharding, total, state, start)
        saver.wait()  # the final save: its failure is an error, not a warning at exit
        return result
    finally:
        saver.close()


def _restore_or_init(config, workdir: str, s: _Setup) -> tuple[Any, int]:
    """``(state, start_step)``: the newest readable checkpoint, else a fresh (or
    ``init_from``) state. Unreadable newer checkpoints are skipped with a warning."""
    architecture = checkpoint_meta(config, s.num_classes, 0)["architecture"]
    restored = ckpt.restore_latest(
        workdir, s.abstract_state, architecture=architecture, log=log,
        read_attempts=int(config.get("checkpoint_read_attempts", 3)),
    )
    if restored is not None:
        state, _, start = restored
        log(f"resuming from checkpoint step {start} in {ckpt.checkpoint_dir(workdir)}")
        return state, start
    state = state_lib.create_train_state(
        s.model, s.tx, image_size=int(config.data.image_size), seed=int(config.seed),
        use_ema=config.optim.ema_decay is not None, mesh=s.mesh,
    )
    if config.get("init_from"):  # fine-tuning: pretrained weights, fresh optimizer
        from dmformer_jax.train.pretrained import init_state_from_pretrained

        state = init_state_from_pretrained(config, state, log=log)
    return state, 0


def _train(config, workdir, data, info, s: _Setup, saver: ckpt.Saver, state_sharding, total, state, start) -> RunResult:
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    log(
        f"{config.model.name} ({num_params:,} params, {state_lib.resolve_dtype(config.model.dtype)} compute, "
        f"{_transfer_dtype(data, config)} input) on {info.name}: "
        f"{info.num_train_examples:,} train / {info.num_eval_examples:,} eval images, "
        f"{info.num_classes} classes; {jax.device_count()} {jax.default_backend()} device(s), "
        f"{jax.process_count()} process(es); global batch {config.batch_size}; "
        f"{total} steps ({s.plan.steps_per_epoch:.1f}/epoch), peak lr {s.plan.peak_lr:.3g}"
    )

    train_step = step_lib.make_train_step(
        s.model, s.tx, s.schedule, s.mesh, state_sharding,
        grad_accum_steps=int(config.optim.grad_accum_steps), ema_decay=config.optim.ema_decay,
        mean=config.data.mean, std=config.data.std,
    )
    eval_step = step_lib.make_eval_step(
        s.model, s.mesh, state_sharding, use_ema=config.optim.ema_decay is not None,
        mean=config.data.mean, std=config.data.std,
    )
    writer = MetricsWriter(workdir, flush_secs=float(config.get("log_flush_secs", 60.0)))
    meta = lambda step: checkpoint_meta(config, s.num_classes, step)  # noqa: E731
    stop_at = min(total, int(config.stop_at_step)) if config.stop_at_step is not None else total

    def evaluate(step: int) -> dict[str, float]:
        t0 = time.time()
        metrics = run_evaluation(config, state, eval_step, s.mesh, data)
        writer.write(step, "eval", metrics)
        log(
            f"eval step {step}: top1 {100 * metrics['top1']:.2f}% | top5 {100 * metrics['top5']:.2f}% | "
            f"loss {metrics['loss']:.4f} | {int(metrics['num_examples'])} images | {time.time() - t0:.1f}s"
        )
        return metrics

    eval_metrics = None
    if start >= total:
        log(f"already trained: step {start} >= {total}")
        result = RunResult(start, evaluate(start) if config.eval_at_end else None)
        writer.close()
        return result

    iterator: Iterator = data.make_train_iterator(
        config, start_step=start, process_index=jax.process_index(), process_count=jax.process_count()
    )
    pending: list[tuple[int, dict]] = []  # device metrics since the last check
    # Undecodable images are dropped by the input pipeline; say how many at log steps.
    data_decode_errors = getattr(data, "decode_error_count", lambda: 0)
    reported_decode_errors = 0
    last_good = start  # newest step whose loss was checked finite
    t_last, step_last = time.time(), start

    def check_pending() -> dict[str, float] | None:
        """Fetches pending metrics; raises on NaN/Inf; returns their mean."""
        nonlocal last_good
        if not pending:
            return None
        fetched = jax.device_get([m for _, m in pending])
        for (step, _), m in zip(pending, fetched):
            if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
                good = ckpt.latest_step(saver.mngr)
                raise TrainingDivergedError(
                    f"loss is {float(m['loss'])} at step {step}; the last good checkpoint "
                    f"(step {good}) is kept in {ckpt.checkpoint_dir(workdir)}; lower "
                    "config.optim.base_lr or set config.optim.grad_clip_norm, then rerun"
                )
        last_good = pending[-1][0]
        pending.clear()
        return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}

    # Device prefetch: the next `device_prefetch` global batches are assembled and on
    # their way to the devices while a step runs (never more than this run consumes).
    depth = max(1, int(config.get("device_prefetch", 2)))
    queued: collections.deque = collections.deque()
    fetched = 0

    def prefetch() -> None:
        nonlocal fetched
        while len(queued) < depth and fetched < stop_at - start:
            queued.append(mesh_lib.global_batch(s.mesh, next(iterator)))
            fetched += 1

    prefetch()
    # Compile ahead of time: the train step, and the eval step if this run evaluates,
    # so a mistake or a slow compile shows at start-up, not at the first eval.
    train_step, train_s = _ahead_of_time(train_step, s.abstract_state, queued[0])
    every = int(config.eval_every_steps)
    next_eval = (start // every + 1) * every
    evaluates = (stop_at == total and config.eval_at_end) or (next_eval <= stop_at and next_eval < total)
    compiled = f"compiled the train step in {train_s:.1f}s"
    if evaluates:
        eval_step, eval_s = _ahead_of_time(eval_step, s.abstract_state, _eval_batch_spec(config, s.mesh, data))
        compiled += f", the eval step in {eval_s:.1f}s"
    log(compiled)
    # Processes can finish compiling minutes apart (a persistent-cache hit on one, a
    # compile on another, as measured with 4 CPU processes where only process 0 hit
    # the cache); the first step's collectives must not start until all are ready.
    _wait_for_all_processes(f"dmformer_compiled_step_{start}")
    t_last = time.time()

    with _SigtermFlag() as sigterm:
        step = start
        while step < stop_at:
            batch = queued.popleft()
            state, metrics = train_step(state, batch)
            step += 1
            pending.append((step, metrics))
            if step == start + 1:
                jax.block_until_ready(metrics)
                log(f"first step took {time.time() - t_last:.1f}s")
                t_last, step_last = time.time(), step
            # Assemble the next batches while the device runs this step.
            prefetch()

            if step % config.log_every_steps == 0 or step == stop_at:
                mean = check_pending()
                now = time.time()
                dt = max(now - t_last, 1e-9)
                img_s = (step - step_last) * config.batch_size / dt if step > step_last else 0.0
                eta = (total - step) * dt / max(step - step_last, 1)
                log(progress_line(step, total, mean, img_s, eta))
                decode_errors = data_decode_errors()
                if decode_errors > reported_decode_errors:
                    reported_decode_errors = decode_errors
                    log(f"skipped {decode_errors} undecodable image(s) so far (counted, not fatal)")
                writer.write(step, "train", {**mean, "img_per_sec": img_s})
                t_last, step_last = now, step

            saver.check()  # a save that failed in the background stops the run here
            preempted = sigterm.preempted(step)
            final = step == stop_at
            if preempted or final or step % config.checkpoint_every_steps == 0:
                check_pending()  # never write a NaN state
                saver.save(step, state, meta(step), force=True)
            if preempted:
                saver.wait()
                writer.close()
                raise Preempted(step, workdir)
            if step % config.eval_every_steps == 0 and step < total:
                eval_metrics = evaluate(step)

    if step == total and config.eval_at_end:
        eval_metrics = evaluate(step)
    elif step < total:
        log(f"stopped at step {step} (config.stop_at_step); rerun without it to continue to {total}")
    writer.close()
    return RunResult(step, eval_metrics, stopped_early=step < total)


# ----------------------------------------------------------------------------- eval only


def evaluate_checkpoint(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
    data: ModuleType | None = None,
) -> dict[str, float]:
    """Top-1/top-5 of checkpoint ``step`` (default newest) of ``workdir`` on the eval split.

    ``config`` defaults to the one stored in the checkpoint (pass one to change e.g.
    ``data.data_dir`` or ``eval_batch_size``; the model fields must match).
    """
    data = _data_module(data)
    workdir = resolve(workdir)
    meta, step = ckpt.read_meta(workdir, step)
    if config is None:
        config = ml_collections.ConfigDict(meta["config"])
    resolve_config_paths(config)
    check_multiprocess()
    validate_config(config, device_count=jax.device_count(), process_count=jax.process_count())
    info = data.dataset_info(config)
    if info.num_classes != meta["num_classes"]:
        raise CheckpointError(
            f"checkpoint has {meta['num_classes']} classes but {config.data.name!r} has "
            f"{info.num_classes}; evaluate on the dataset it was trained on"
        )
    s = _setup(config, info.num_classes, info.num_train_examples)
    mngr = ckpt.make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        state, _ = ckpt.restore(mngr, step, s.abstract_state)
    finally:
        mngr.close()
    eval_step = step_lib.make_eval_step(
        s.model, s.mesh, _state_sharding(s.abstract_state), use_ema=config.optim.ema_decay is not None,
        mean=config.data.mean, std=config.data.std,
    )
    metrics = run_evaluation(config, state, eval_step, s.mesh, data)
    log(
        f"eval of {ckpt.checkpoint_dir(workdir)}/{step}: top1 {100 * metrics['top1']:.2f}% | "
        f"top5 {100 * metrics['top5']:.2f}% | loss {metrics['loss']:.4f} | {int(metrics['num_examples'])} images"
    )
    return {**metrics, "step": step}
