"""The training loop: restore or init, train, evaluate, checkpoint, stop cleanly.

`train_and_evaluate` is what ``train.py`` runs; `evaluate_checkpoint` is the eval-only
mode. Both take the data module as an argument (default: the task's own,
`Task.data_module`) so tests can substitute synthetic data with the same API.
"""

from __future__ import annotations

import collections
import dataclasses
import math
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
from dmformer_jax.tasks import Task, get_task, task_name
from dmformer_jax.train import mesh as mesh_lib
from dmformer_jax.train import optim
from dmformer_jax.train import state as state_lib
from dmformer_jax.train import step as step_lib
from dmformer_jax.train.logger import MetricsWriter, log, log_all_processes, progress_line

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


def _data_module(data: ModuleType | None, task: Task) -> ModuleType:
    """``data`` when given (tests pass synthetic modules), else ``task``'s own input
    module (`Task.data_module`, imported late: it imports TensorFlow)."""
    return data if data is not None else task.data_module()


# ----------------------------------------------------------------------------- config


def _suggest(batch: int, multiple: int) -> int:
    return max(multiple, int(math.ceil(batch / multiple)) * multiple)


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """The global eval batch (``eval_batch_size``, or ``batch_size`` when None)."""
    return int(config.eval_batch_size if config.eval_batch_size is not None else config.batch_size)


def validate_config(config: ml_collections.ConfigDict, *, device_count: int, process_count: int) -> None:
    """Raises `ConfigError` (one line: the problem and a fix) for an unusable config."""
    get_task(config)  # an unknown config.task
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
    for name in ("num_train_steps", "stop_at_step"):
        if config.get(name) is not None:
            positive[name] = config[name]
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
    optim.decay_rule(config)
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
    config: ml_collections.ConfigDict, num_classes: int, step: int, model: Any = None
) -> dict[str, Any]:
    """The metadata record (schema v2) saved with every checkpoint: rebuilds the model.

    ``model``: the module this run trains (default: ``config.model``'s classifier with
    ``num_classes`` outputs, in the dtype this run computes in).
    """
    import json

    if model is None:
        model = state_lib.build_model(config, num_classes)
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
        task=task_name(config),
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


class SumAccumulator:
    """Adds per-batch sums on the host in 64 bits: integer arrays as int64, floating
    ones as float64 (shapes and tree structure as the first batch's).

    The device computes one batch's sums in its own dtypes (int32, float32: JAX runs
    without x64); one batch cannot overflow int32, but a whole split can: ADE20K's
    2,000 validation images hold ~5e8 labelled pixels, and the per-class pixel counts
    of a larger split or of several evaluations pass 2**31. Adding on the host keeps
    the totals exact.
    """

    def __init__(self) -> None:
        self.totals: Any = None

    def add(self, sums: Any) -> None:
        """Adds one batch's sums (a pytree of arrays, on the device or the host)."""
        sums = jax.tree.map(_widen, jax.device_get(sums))
        self.totals = sums if self.totals is None else jax.tree.map(np.add, self.totals, sums)


def _widen(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        return x.astype(np.int64)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float64)
    return x


def run_evaluation(
    config: ml_collections.ConfigDict, state: Any, eval_step, mesh, data: ModuleType, task: Task
) -> dict[str, float]:
    """``task``'s metrics (`Task.finalize`) over the whole eval split, every example
    once: the eval step's sums are global (all processes); they are added over every
    batch on the host in int64/float64 (`SumAccumulator`)."""
    local_size = eval_batch_size(config) // jax.process_count()
    acc = SumAccumulator()
    pending = None  # the previous batch's sums: fetched after the next batch is dispatched
    for local in data.make_eval_iterator(
        config, process_index=jax.process_index(), process_count=jax.process_count()
    ):
        if pending is None and acc.totals is None:
            task.check_batch(local, "eval")
        batch = mesh_lib.global_batch(mesh, _pad_eval_batch(local, local_size))
        sums = eval_step(state, batch)
        if pending is not None:
            acc.add(pending)
        pending = sums
    if pending is None:
        raise ConfigError(f"the eval split of {config.data.name!r} yielded no batches")
    acc.add(pending)
    return task.finalize(acc.totals)


@dataclasses.dataclass
class _Setup:
    model: Any
    tx: Any
    schedule: Any
    plan: optim.StepPlan
    mesh: Any
    abstract_state: Any
    num_classes: int


def _setup(config: ml_collections.ConfigDict, task: Task, info: Any) -> _Setup:
    """Model (``task``'s), optimizer, mesh and the abstract train state for ``info``'s dataset."""
    model = task.build_model(config, info)
    plan = optim.plan_steps(config, info.num_train_examples)
    tx, schedule = optim.make_optimizer(config, plan)
    mesh = mesh_lib.make_mesh()
    abstract = state_lib.abstract_train_state(
        model, tx, image_size=int(config.data.image_size), seed=int(config.seed),
        use_ema=config.optim.ema_decay is not None, mesh=mesh,
    )
    return _Setup(model, tx, schedule, plan, mesh, abstract, int(info.num_classes))


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


def _eval_batch_spec(config, mesh, data, task: Task) -> dict[str, jax.ShapeDtypeStruct] | None:
    """The shapes `run_evaluation` feeds the eval step (for ahead-of-time compiling);
    None when the task gives none (`Task.eval_batch_spec`)."""
    sharding = mesh_lib.batch_sharded(mesh)
    image = np.uint8 if _transfer_dtype(data, config) == "uint8" else np.float32
    spec = task.eval_batch_spec(config, eval_batch_size(config), image)
    if spec is None:
        return None
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in spec.items()}


def _state_sharding(abstract_state: Any) -> Any:
    return jax.tree.map(lambda s: s.sharding, abstract_state)


def make_eval_step(config: ml_collections.ConfigDict, task: Task, setup: _Setup):
    """The run's eval step (`step_lib.make_eval_step`): the EMA parameters when
    ``config.optim.ema_decay`` is set, the raw ones otherwise; uint8 inputs normalised
    with the config's mean/std. One definition for training's evals and eval-only runs."""
    return step_lib.make_eval_step(
        task, setup.model, setup.mesh, _state_sharding(setup.abstract_state),
        use_ema=config.optim.ema_decay is not None, mean=config.data.mean, std=config.data.std,
    )


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
    workdir = resolve(workdir)
    resolve_config_paths(config)
    check_multiprocess()
    validate_config(config, device_count=jax.device_count(), process_count=jax.process_count())
    task = get_task(config)
    data = _data_module(data, task)
    log_all_processes(bool(config.get("log_all_processes", False)))
    cache = enable_compilation_cache(config)
    if cache:
        log(f"persistent compilation cache: {cache}")
    info = data.dataset_info(config)
    s = _setup(config, task, info)

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
        trainer = Trainer(
            config, workdir, task=task, data=data, info=info, setup=s, saver=saver, state=state, start=start
        )
        result = trainer.run()
        saver.wait()  # the final save: its failure is an error, not a warning at exit
        return result
    finally:
        saver.close()


def _restore_or_init(config, workdir: str, s: _Setup) -> tuple[Any, int]:
    """``(state, start_step)``: the newest readable checkpoint, else a fresh (or
    ``init_from``) state. Unreadable newer checkpoints are skipped with a warning."""
    architecture = checkpoint_meta(config, s.num_classes, 0, s.model)["architecture"]
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


class Trainer:
    """One training run: from a restored (or fresh) ``state`` at step ``start`` to
    ``config.stop_at_step`` or the last step, with periodic logs, checkpoints and evals.

    Task-generic: the loss, the metrics and their log fields come from ``task``
    (`dmformer_jax.tasks.Task`). The caller owns ``saver`` (waits for and closes it).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        *,
        task: Task,
        data: ModuleType,
        info: Any,
        setup: _Setup,
        saver: ckpt.Saver,
        state: Any,
        start: int,
    ):
        self.config, self.workdir, self.task, self.data, self.info = config, workdir, task, data, info
        self.setup, self.saver = setup, saver
        self.state, self.start, self.step = state, int(start), int(start)
        self.total = setup.plan.total_steps
        stop_at_step = config.stop_at_step
        self.stop_at = min(self.total, int(stop_at_step)) if stop_at_step is not None else self.total
        state_sharding = _state_sharding(setup.abstract_state)
        self.train_step = step_lib.make_train_step(
            task, setup.model, setup.tx, setup.schedule, setup.mesh, state_sharding,
            grad_accum_steps=int(config.optim.grad_accum_steps), ema_decay=config.optim.ema_decay,
            mean=config.data.mean, std=config.data.std,
        )
        self.eval_step = make_eval_step(config, task, setup)
        self.writer: MetricsWriter | None = None
        self.pending: list[tuple[int, dict]] = []  # device metrics since the last check
        # Device prefetch: the next `device_prefetch` global batches are assembled and on
        # their way to the devices while a step runs (never more than this run consumes).
        self._depth = max(1, int(config.get("device_prefetch", 2)))
        self._queued: collections.deque = collections.deque()
        self._fetched = 0
        self._iterator: Iterator | None = None
        # Undecodable images are dropped by the input pipeline; say how many at log steps.
        self._decode_errors = getattr(data, "decode_error_count", lambda: 0)
        self._reported_decode_errors = 0
        self._t_last, self._step_last = time.time(), self.start

    # --- the run -------------------------------------------------------------------

    def run(self) -> RunResult:
        """Trains to `stop_at`, evaluating and checkpointing on schedule.

        Raises:
          TrainingDivergedError: NaN/Inf loss or gradient norm.
          Preempted: SIGTERM (or the pod's preemption notice); the step was saved.
        """
        config = self.config
        self._log_start()
        if self.stop_at <= self.start < self.total:
            # Nothing to train, save or evaluate: the workdir is left exactly as it is.
            log(f"nothing to do: config.stop_at_step={config.stop_at_step} but the run is already at step "
                f"{self.start}; rerun with a later --config.stop_at_step or without it to continue to {self.total}")
            return RunResult(self.start, None, stopped_early=True)
        self.writer = MetricsWriter(self.workdir, flush_secs=float(config.get("log_flush_secs", 60.0)))
        if self.start >= self.total:
            log(f"already trained: step {self.start} >= {self.total}")
            result = RunResult(self.start, self.evaluate(self.start) if config.eval_at_end else None)
            self.writer.close()
            return result

        self._iterator = self.data.make_train_iterator(
            config, start_step=self.start, process_index=jax.process_index(), process_count=jax.process_count()
        )
        self._prefetch()
        self._compile()
        # Processes can finish compiling minutes apart (a persistent-cache hit on one, a
        # compile on another, as measured with 4 CPU processes where only process 0 hit
        # the cache); the first step's collectives must not start until all are ready.
        _wait_for_all_processes(f"dmformer_compiled_step_{self.start}")
        self._t_last = time.time()

        eval_metrics = None
        with _SigtermFlag() as sigterm:
            while self.step < self.stop_at:
                step = self._train_one()
                if step % config.log_every_steps == 0 or step == self.stop_at:
                    self._log_progress(step)

                self.saver.check()  # a save that failed in the background stops the run here
                preempted = sigterm.preempted(step)
                if preempted or step == self.stop_at or step % config.checkpoint_every_steps == 0:
                    self._check_pending()  # never write a NaN state
                    self.saver.save(step, self.state, checkpoint_meta(config, self.setup.num_classes, step, self.setup.model), force=True)
                if preempted:
                    self.saver.wait()
                    self.writer.close()
                    raise Preempted(step, self.workdir)
                if step % config.eval_every_steps == 0 and step < self.total:
                    eval_metrics = self.evaluate(step)

        step = self.step
        if step == self.total and config.eval_at_end:
            eval_metrics = self.evaluate(step)
        elif step < self.total:
            log(f"stopped at step {step} (config.stop_at_step); rerun without it to continue to {self.total}")
        self.writer.close()
        return RunResult(step, eval_metrics, stopped_early=step < self.total)

    def evaluate(self, step: int) -> dict[str, float]:
        """The task's metrics of the current state on the whole eval split, logged and
        written to ``metrics.jsonl`` at ``step``."""
        t0 = time.time()
        metrics = run_evaluation(self.config, self.state, self.eval_step, self.setup.mesh, self.data, self.task)
        self.writer.write(step, "eval", metrics)
        log(f"eval step {step}: {self.task.eval_summary(metrics)} | {time.time() - t0:.1f}s")
        return metrics

    # --- pieces of the run -----------------------------------------------------------

    def _log_start(self) -> None:
        config, info, s = self.config, self.info, self.setup
        num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.state.params))
        log(
            f"{config.model.name} ({num_params:,} params, {state_lib.resolve_dtype(config.model.dtype)} compute, "
            f"{_transfer_dtype(self.data, config)} input) on {info.name}: "
            f"{info.num_train_examples:,} train / {info.num_eval_examples:,} eval images, "
            f"{info.num_classes} classes; {jax.device_count()} {jax.default_backend()} device(s), "
            f"{jax.process_count()} process(es); global batch {config.batch_size}; "
            f"{self.total} steps ({s.plan.steps_per_epoch:.1f}/epoch), peak lr {s.plan.peak_lr:.3g}"
        )

    def _compile(self) -> None:
        """Compiles ahead of time the train step, and the eval step if this run
        evaluates, so a mistake or a slow compile shows at start-up, not at the first eval."""
        config, s = self.config, self.setup
        self.train_step, train_s = _ahead_of_time(self.train_step, s.abstract_state, self._queued[0])
        every = int(config.eval_every_steps)
        next_eval = (self.start // every + 1) * every
        evaluates = (self.stop_at == self.total and config.eval_at_end) or (
            next_eval <= self.stop_at and next_eval < self.total
        )
        compiled = f"compiled the train step in {train_s:.1f}s"
        spec = _eval_batch_spec(config, s.mesh, self.data, self.task) if evaluates else None
        if spec is not None:
            self.eval_step, eval_s = _ahead_of_time(self.eval_step, s.abstract_state, spec)
            compiled += f", the eval step in {eval_s:.1f}s"
        log(compiled)

    def _train_one(self) -> int:
        """Runs one step on the next queued batch; returns the new step number."""
        batch = self._queued.popleft()
        self.state, metrics = self.train_step(self.state, batch)
        self.step += 1
        self.pending.append((self.step, metrics))
        if self.step == self.start + 1:
            jax.block_until_ready(metrics)
            log(f"first step took {time.time() - self._t_last:.1f}s")
            self._t_last, self._step_last = time.time(), self.step
        self._prefetch()  # assemble the next batches while the device runs this step
        return self.step

    def _prefetch(self) -> None:
        """Queues global batches until `device_prefetch` are waiting (or the run's last)."""
        while len(self._queued) < self._depth and self._fetched < self.stop_at - self.start:
            local = next(self._iterator)
            if self._fetched == 0:
                self.task.check_batch(local, "train")
            self._queued.append(mesh_lib.global_batch(self.setup.mesh, local))
            self._fetched += 1

    def _check_pending(self) -> dict[str, float] | None:
        """Fetches the pending metrics; raises on NaN/Inf; returns their means."""
        if not self.pending:
            return None
        fetched = jax.device_get([m for _, m in self.pending])
        for (step, _), m in zip(self.pending, fetched):
            if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
                good = ckpt.latest_step(self.saver.mngr)
                raise TrainingDivergedError(
                    f"loss is {float(m['loss'])} at step {step}; the last good checkpoint "
                    f"(step {good}) is kept in {ckpt.checkpoint_dir(self.workdir)}; lower "
                    "config.optim.base_lr or set config.optim.grad_clip_norm, then rerun"
                )
        self.pending.clear()
        return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}

    def _log_progress(self, step: int) -> None:
        """The progress line and the ``train`` record of the steps since the last one."""
        config = self.config
        mean = self._check_pending()
        now = time.time()
        dt = max(now - self._t_last, 1e-9)
        steps = step - self._step_last
        img_s = steps * config.batch_size / dt if steps > 0 else 0.0
        eta = (self.total - step) * dt / max(steps, 1)
        log(progress_line(step, self.total, mean, img_s, eta, self.task.progress_fields(mean)))
        decode_errors = self._decode_errors()
        if decode_errors > self._reported_decode_errors:
            self._reported_decode_errors = decode_errors
            log(f"skipped {decode_errors} undecodable image(s) so far (counted, not fatal)")
        self.writer.write(step, "train", {**mean, "img_per_sec": img_s})
        self._t_last, self._step_last = now, step


# ----------------------------------------------------------------------------- eval only


def evaluate_checkpoint(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
    data: ModuleType | None = None,
) -> dict[str, float]:
    """The task's eval metrics (classification: top-1/top-5) of checkpoint ``step``
    (default newest) of ``workdir`` on the eval split.

    ``config`` defaults to the one stored in the checkpoint (pass one to change e.g.
    ``data.data_dir`` or ``eval_batch_size``; the model fields must match).
    """
    workdir = resolve(workdir)
    meta, step = ckpt.read_meta(workdir, step)
    if config is None:
        config = ml_collections.ConfigDict(meta["config"])
    resolve_config_paths(config)
    check_multiprocess()
    validate_config(config, device_count=jax.device_count(), process_count=jax.process_count())
    task = get_task(config)
    data = _data_module(data, task)
    info = data.dataset_info(config)
    if info.num_classes != meta["num_classes"]:
        raise CheckpointError(
            f"checkpoint has {meta['num_classes']} classes but {config.data.name!r} has "
            f"{info.num_classes}; evaluate on the dataset it was trained on"
        )
    s = _setup(config, task, info)
    mngr = ckpt.make_manager(workdir, read_only=True, async_checkpointing=False)
    try:
        state, _ = ckpt.restore(mngr, step, s.abstract_state)
    finally:
        mngr.close()
    metrics = run_evaluation(config, state, make_eval_step(config, task, s), s.mesh, data, task)
    log(f"eval of {ckpt.checkpoint_dir(workdir)}/{step}: {task.eval_summary(metrics)}")
    return {**metrics, "step": step}
