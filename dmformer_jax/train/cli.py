"""Command line of ``train.py`` and ``python -m dmformer_jax.eval``.

Every mistake a user can fix (unknown config key, wrong type, missing config file,
indivisible batch, unknown model, missing data or checkpoint) ends the process with
ONE line ``error: ...`` on stderr and exit status 2, before the workdir is touched.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from dmformer_jax.errors import CheckpointSaveError, ConfigError, UserError, first_line
from dmformer_jax.host_memory import keep_freed_host_memory

USER_ERROR_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 1
SAVE_FAILED_EXIT_CODE = 3


@dataclasses.dataclass
class Args:
    config: object  # ml_collections.ConfigDict, or None (eval: use the checkpoint's)
    workdir: str
    eval_only: bool
    step: int | None


def _override_keys(argv: Sequence[str]) -> list[str]:
    return [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]


def _unknown_key_message(exc: BaseException, argv: Sequence[str]) -> str:
    text = str(exc).replace("\\n", "\n").replace("\\", "")
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)
    missing = names[0] if names else text
    keys = [k for k in _override_keys(argv) if k.split(".")[-1] == missing]
    key = keys[0] if keys else missing
    hint = re.search(r'Did you mean "([^"]+)"', text)
    fix = f"did you mean {hint.group(1)!r}?" if hint else "check the spelling against configs/common.py"
    return f"unknown config key {key!r} (--config.{key}=...); {fix}"


def _config_file(argv: Sequence[str]) -> str | None:
    """The ``--config`` file named in ``argv`` (without a ``:arg`` suffix), if any."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
        if a.startswith("--config="):
            return a.split("=", 1)[1].split(":", 1)[0]
    return None


def _bad_value_message(text: str, argv: Sequence[str]) -> str:
    """``--config.K=V is not a valid T (why); pass a T, e.g. --config.K=<default>``."""
    m = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", text)
    if not m:
        return text
    key, value, why = m.groups()
    try:  # the recipe's own value of the field shows its type and a valid example
        rest = [a for a in argv if not a.startswith(f"--config.{key}=")]
        example = parse_args([*rest, "--workdir=unused"]).config
        for part in key.split("."):
            example = example[part]
    except (ConfigError, KeyError, TypeError):
        example = None
    if example is None:
        return f"--config.{key}={value} is not valid ({why}); see configs/common.py for the field's type"
    kind = type(example).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    return f"--config.{key}={value} is not a valid {kind} ({why}); pass {article} {kind}, e.g. --config.{key}={example}"


def parse_args(argv: Sequence[str], *, config_required: bool = True) -> Args:
    """Parses ``--config FILE [--config.key=value ...] --workdir DIR [--eval_only] [--step N]``.

    Raises:
      ConfigError: a one-line description of the bad flag.
    """
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "Python config file with get_config(); override fields with --config.x=y.",
        flag_values=fv, lock_config=True, sys_argv=list(argv),
    )
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard.", flag_values=fv)
    flags.DEFINE_bool("eval_only", False, "Evaluate the newest (or --step) checkpoint and exit.", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step for --eval_only (default: newest).", flag_values=fv)
    path = _config_file(argv)
    if path is not None and "://" not in path and not os.path.isfile(path):
        raise ConfigError(
            f"cannot load the config file {path!r}: it does not exist; pass e.g. --config configs/digits.py"
        )
    try:
        rest = fv(list(argv))
        if len(rest) > 1:
            raise ConfigError(f"unexpected argument(s) {rest[1:]}; flags look like --workdir=DIR")
        if not fv.workdir:
            raise ConfigError("--workdir is required (the run directory, e.g. --workdir runs/digits)")
        if fv["config"].value is None and not fv["config"].present and not config_required:
            return Args(None, fv.workdir, fv.eval_only, fv.step)
        config = fv.config  # loads the file and applies the overrides
        if config is not None:
            config.keys()  # a failed load is deferred until first use: surface it here
    except flags.Error as e:
        raise ConfigError(_bad_value_message(first_line(e, None), argv)) from None
    except (AttributeError, KeyError) as e:
        raise ConfigError(_unknown_key_message(e, argv)) from None
    except OSError as e:
        raise ConfigError(
            f"cannot load the config file: {first_line(e, None)}; pass e.g. --config configs/digits.py"
        ) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad config override: {first_line(e, None)}") from None
    if config is None:
        raise ConfigError("--config is required, e.g. --config configs/digits.py")
    return Args(config, fv.workdir, fv.eval_only, fv.step)


# The cluster kinds `jax.distributed.initialize()` detects by itself that
# ``config.distributed='auto'`` acts on (names of JAX's ``ClusterEnv`` classes).
AUTO_CLUSTERS = {"gcetpu": "Cloud TPU", "gketpu": "Cloud TPU (GKE)", "slurm": "SLURM", "ompi": "Open MPI"}


def distributed_mode(config) -> str:
    """``'auto'``, ``'on'`` or ``'off'`` from ``config.distributed`` (bool or string).

    Raises:
      ConfigError: any other value.
    """
    value = config.distributed
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "1", "yes", "on"):
        return "on"
    if text in ("false", "0", "no", "off"):
        return "off"
    raise ConfigError(f"config.distributed={value!r}; use 'auto' (the default), True or False")


def detected_cluster() -> str | None:
    """The cluster JAX's own detection finds (Cloud TPU, SLURM, Open MPI), or None.

    The same checks `jax.distributed.initialize()` makes without arguments (its
    ``ClusterEnv`` classes); if that private API moves, the SLURM and Open MPI
    environment variables are checked directly.
    """
    try:
        from jax._src import clusters

        kinds = [c for c in clusters.ClusterEnv._cluster_types if c.name in AUTO_CLUSTERS]
    except (ImportError, AttributeError):
        kinds = None
    if kinds is None:
        if all(v in os.environ for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                         "SLURM_PROCID", "SLURM_LOCALID")):
            return AUTO_CLUSTERS["slurm"]
        return AUTO_CLUSTERS["ompi"] if "OMPI_MCA_orte_hnp_uri" in os.environ else None
    for kind in kinds:
        try:
            if kind.is_env_present():
                return AUTO_CLUSTERS[kind.name]
        except Exception:  # noqa: BLE001  (a detector that cannot run detects nothing)
            continue
    return None


def _single_process_job() -> bool:
    """A SLURM or Open MPI job of one task: nothing to join. (JAX would still give the
    task only the GPU of its local rank, so a one-task multi-GPU job must not initialise.)"""
    return os.environ.get("SLURM_NTASKS") == "1" or os.environ.get("OMPI_COMM_WORLD_SIZE") == "1"


def _cluster_fields_given(config) -> bool:
    return any(config.get(k) is not None for k in ("coordinator_address", "num_processes", "process_id"))


def init_distributed(config) -> bool:
    """``jax.distributed.initialize`` when needed (before any other JAX use).

    ``config.distributed``: True always initialises, False never, ``'auto'`` (default)
    when JAX detects a cluster (Cloud TPU VM, SLURM, Open MPI; not a one-task SLURM or
    Open MPI job) or any of ``coordinator_address``/``num_processes``/``process_id`` is
    set. ``distributed_heartbeat_timeout_s`` (None: JAX's 100 s) is passed on. Returns
    whether it initialised.
    """
    mode = distributed_mode(config)
    if mode == "auto" and not _cluster_fields_given(config):
        cluster = detected_cluster()
        if cluster is None or (cluster in ("SLURM", "Open MPI") and _single_process_job()):
            return False
    elif mode == "off":
        return False
    import jax

    heartbeat = config.get("distributed_heartbeat_timeout_s")
    if heartbeat is not None and heartbeat <= 0:
        raise ConfigError(f"config.distributed_heartbeat_timeout_s={heartbeat}; use a number of seconds > 0 "
                          "(or None for JAX's default, 100)")
    # CPU clusters need a collectives backend; GPU/TPU clients ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            **({} if heartbeat is None else {"heartbeat_timeout_seconds": heartbeat}),
        )
    except (ValueError, RuntimeError) as e:
        raise ConfigError(
            f"jax.distributed.initialize failed: {first_line(e, None)}; set config.coordinator_address, "
            "num_processes and process_id, or run where JAX detects the cluster (Cloud TPU, SLURM, "
            "Open MPI), or pass --config.distributed=False for one process"
        ) from None
    return True


def shutdown_distributed(config) -> None:
    """Leaves the cluster while every process is still alive.

    Left to interpreter exit, the coordination-service shutdown barrier can wait on a
    process that is already tearing its modules down (seen with 2 CPU processes).
    """
    if config is None:
        return
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None, *, eval_entry: bool = False) -> int:
    """Runs training (or ``--eval_only`` evaluation); returns the exit status.

    0: done; 1: diverged (NaN/Inf loss); 2: user error; 3: a checkpoint could not be
    written (earlier ones are kept); 143: preempted (checkpoint saved).
    """
    # Before JAX starts its CPU client: keep each step's freed host memory mapped
    # (no-op on GPU/TPU hosts; see dmformer_jax/host_memory.py).
    keep_freed_host_memory()
    from dmformer_jax.train.loop import PREEMPTED_EXIT_CODE, Preempted, TrainingDivergedError

    argv = list(sys.argv if argv is None else argv)
    try:
        args = parse_args(argv, config_required=not eval_entry)
        if args.config is not None:
            init_distributed(args.config)
        from dmformer_jax.train import loop

        try:
            if eval_entry or args.eval_only:
                loop.evaluate_checkpoint(args.workdir, args.config, step=args.step)
            else:
                loop.train_and_evaluate(args.config, args.workdir)
        finally:
            shutdown_distributed(args.config)
    except CheckpointSaveError as e:
        return _error(first_line(e, None), SAVE_FAILED_EXIT_CODE)
    except UserError as e:
        return _error(first_line(e, None), USER_ERROR_EXIT_CODE)
    except TrainingDivergedError as e:
        return _error(first_line(e, None), DIVERGED_EXIT_CODE)
    except Preempted as e:
        print(str(e), flush=True)
        print(f"preempted: {e}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT_CODE
    return 0


def exit_process(code: int) -> None:
    """Ends the process with ``code`` (what ``train.py`` does with `main`'s status).

    After a failed save Orbax leaves threads that wait up to 300 s for signals of the
    step that never came; the interpreter would join them before exiting. The error is
    printed and earlier checkpoints are complete, so exit without waiting for them.
    """
    if code == SAVE_FAILED_EXIT_CODE:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run() -> None:
    """Console entry point: `exit_process` of `main`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    exit_process(main())
