"""Pod readiness (issue 11): distributed start-up, one restore decision for all
processes, non-blocking metrics, mixed precision / uint8 input, start-up options.

The multi-process tests run small standalone workers (gloo collectives on CPU)
instead of train.py where the trainer's compiled step is not what is being tested.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tiny_configs import digits_config
from subprocess_runs import xla_flags  # noqa: E402  (tests/ is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(devices: int = 1) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO,
               XLA_FLAGS=xla_flags(devices))
    for key in [k for k in env if k.startswith(("SLURM_", "OMPI_"))]:
        del env[key]
    return env


# ----------------------------------------------------------------------------- restore


@pytest.mark.slow
def test_restore_decision_is_process_0s(tmp_path):
    """A read fault on one process only never splits the processes' restored step."""
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, "tests/restore_fault_worker.py", str(i), str(port), str(tmp_path)],
                         cwd=REPO, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    results = [dict((ln.split()[1], ln.split()[2:]) for ln in out.splitlines() if ln.startswith("RESULT "))
               for out in outs]
    # Both processes: transient fault on process 1 retried -> newest step for everyone.
    for r in results:
        assert r["transient"] == ["step=2", "2.0"], results
        # process 1 can never read what process 0 chose: everyone stops, nothing moved.
        assert r["persistent"][0] == "CheckpointError", results
        # process 0 cannot read step 2: everyone resumes from step 1 (process 0's choice).
        assert r["chief"] == ["step=1", "1.0"], results
    assert "unreadable on process(es) [1]" in outs[0]
    assert os.path.isdir(tmp_path / "persistent" / "checkpoints" / "2")
    assert os.path.isdir(tmp_path / "chief" / "checkpoints_unreadable" / "2")
    assert not os.path.exists(tmp_path / "chief" / "checkpoints" / "2")


# ----------------------------------------------------------------------------- start-up


def _cluster_config(**fields):
    import ml_collections

    base = dict(distributed="auto", coordinator_address=None, num_processes=None, process_id=None)
    base.update(fields)
    return ml_collections.ConfigDict(base)


SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_STEP_NODELIST": "localhost"}


def test_distributed_auto_detects_slurm_and_open_mpi(monkeypatch):
    from dmformer_jax.errors import ConfigError
    from dmformer_jax.train import cli

    for key in [k for k in os.environ if k.startswith(("SLURM_", "OMPI_"))]:
        monkeypatch.delenv(key)
    assert cli.detected_cluster() is None
    calls = []
    monkeypatch.setattr("jax.distributed.initialize", lambda **kw: calls.append(kw))
    assert cli.init_distributed(_cluster_config()) is False  # one plain process: nothing to join
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    assert cli.detected_cluster() == "SLURM"
    assert cli.init_distributed(_cluster_config()) is True
    assert cli.init_distributed(_cluster_config(distributed="False")) is False  # explicit off wins
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task job (e.g. srun --gpus=8): keep every GPU
    assert cli.init_distributed(_cluster_config()) is False
    assert cli.init_distributed(_cluster_config(distributed=True)) is True
    monkeypatch.setenv("SLURM_NTASKS", "2")
    for key in SLURM_ENV:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.96.0.1:34911")
    assert cli.detected_cluster() == "Open MPI"
    monkeypatch.delenv("OMPI_MCA_orte_hnp_uri")
    # cluster fields given by hand: initialise even without a detected cluster
    assert cli.init_distributed(_cluster_config(coordinator_address="h:1", num_processes=2, process_id=0)) is True
    assert len(calls) == 3
    with pytest.raises(ConfigError, match="config.distributed='sometimes'"):
        cli.distributed_mode(_cluster_config(distributed="sometimes"))


def test_heartbeat_timeout_reaches_jax_distributed(monkeypatch):
    """``distributed_heartbeat_timeout_s`` is handed to ``jax.distributed.initialize``
    (unset: JAX's own default); a value <= 0 is a one-line config error."""
    from dmformer_jax.errors import ConfigError
    from dmformer_jax.train import cli

    calls = []
    monkeypatch.setattr("jax.distributed.initialize", lambda **kw: calls.append(kw))
    given = dict(coordinator_address="h:1", num_processes=2, process_id=0)
    assert cli.init_distributed(_cluster_config(**given, distributed_heartbeat_timeout_s=900)) is True
    assert calls[-1]["heartbeat_timeout_seconds"] == 900
    assert cli.init_distributed(_cluster_config(**given, distributed_heartbeat_timeout_s=None)) is True
    assert "heartbeat_timeout_seconds" not in calls[-1]
    with pytest.raises(ConfigError, match=r"distributed_heartbeat_timeout_s=0; use a number of seconds > 0"):
        cli.init_distributed(_cluster_config(**given, distributed_heartbeat_timeout_s=0))
    assert len(calls) == 2


def test_processes_without_distributed_client_is_one_line_error(monkeypatch):
    """A libtpu multi-host slice started without jax.distributed: one error line."""
    from dmformer_jax.errors import ConfigError
    from dmformer_jax.train import loop

    monkeypatch.setattr("jax.process_count", lambda: 4)
    monkeypatch.setattr("jax.distributed.is_initialized", lambda: False)
    with pytest.raises(ConfigError) as e:
        loop.check_multiprocess()
    message = str(e.value)
    assert "\n" not in message and "4 processes" in message and "--config.distributed=auto" in message
    monkeypatch.setattr("jax.distributed.is_initialized", lambda: True)
    loop.check_multiprocess()


# ----------------------------------------------------------------------------- precision


def test_device_normalisation_equals_host():
    import jax.numpy as jnp
    import tensorflow as tf

    from configs.common import IMAGENET_MEAN, IMAGENET_STD
    from dmformer_jax.data import augment as aug
    from dmformer_jax.train.step import normalize_images

    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    host = aug.normalize(tf.constant(pixels), IMAGENET_MEAN, IMAGENET_STD).numpy()
    device = np.asarray(normalize_images(jnp.asarray(pixels), IMAGENET_MEAN, IMAGENET_STD))
    assert device.dtype == np.float32
    np.testing.assert_allclose(device, host, atol=1e-6, rtol=0)
    same = jnp.asarray(host)  # already-normalised float input passes through
    assert normalize_images(same, IMAGENET_MEAN, IMAGENET_STD) is same


@pytest.mark.parametrize("name", ["dmformer_t", "dmformer_s", "dmformer_l"])
def test_imagenet_configs_resolve_auto_per_backend(name, monkeypatch):
    import importlib

    import jax

    from dmformer_jax.data.pipeline import transfer_dtype
    from dmformer_jax.train import state as state_lib

    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.model.dtype == "auto" and config.data.transfer_dtype == "auto"
    assert state_lib.resolve_dtype(config.model.dtype, "tpu") == "bfloat16"
    assert state_lib.resolve_dtype(config.model.dtype, "gpu") == "bfloat16"
    assert state_lib.resolve_dtype(config.model.dtype, "cpu") == "float32"
    assert transfer_dtype(config) == "float32"  # this test runs on CPU
    assert state_lib.build_model(config, 10).dtype == jax.numpy.float32
    monkeypatch.setattr("jax.default_backend", lambda: "tpu")
    assert transfer_dtype(config) == "uint8"
    assert state_lib.build_model(config, 10).dtype == jax.numpy.bfloat16
    param_dtype = state_lib.build_model(config, 10).param_dtype
    assert param_dtype == jax.numpy.float32  # parameters stay float32


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    import dmformer_jax.data as data

    path = str(tmp_path_factory.mktemp("tfds"))
    data.dataset_info(_digits_config(path))  # prepare once
    return path


def _digits_config(data_dir, transfer="float32", **augment):
    return digits_config(data_dir, **{
        "eval_batch_size": 64,  # 300 eval images: the last batch is padded
        "data.shuffle_buffer": 64, "data.transfer_dtype": transfer,
        **{f"augment.{k}": v for k, v in augment.items()},
    })


def test_uint8_transfer_equals_host_normalisation(digits_dir):
    """uint8 batches normalised on the device equal the float32 pipeline's (<= 1e-6),
    eval padding and masks included, and train batches without mixing/erasing."""
    import dmformer_jax.data as data
    from configs.common import IMAGENET_MEAN, IMAGENET_STD
    from dmformer_jax.train.step import normalize_images

    def norm(x):
        assert x.dtype == np.uint8
        return np.asarray(normalize_images(x, IMAGENET_MEAN, IMAGENET_STD))

    f32, u8 = _digits_config(digits_dir), _digits_config(digits_dir, "uint8")
    evals = [list(data.make_eval_iterator(c, process_index=0, process_count=1)) for c in (f32, u8)]
    assert len(evals[0]) == len(evals[1]) == 5
    for a, b in zip(*evals):
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_array_equal(a["label"], b["label"])
        real = a["mask"]  # padding rows are masked out (zeros of either dtype)
        np.testing.assert_allclose(norm(b["image"])[real], a["image"][real], atol=1e-6, rtol=0)
    assert not evals[1][-1]["mask"].all() and not evals[1][-1]["image"][~evals[1][-1]["mask"]].any()

    plain = dict(mixup_alpha=0.0, cutmix_alpha=0.0, random_erasing=0.0)  # RandAugment stays on
    f32, u8 = _digits_config(digits_dir, **plain), _digits_config(digits_dir, "uint8", **plain)
    trains = [data.make_train_iterator(c, start_step=3, process_index=0, process_count=1) for c in (f32, u8)]
    for _ in range(2):
        a, b = next(trains[0]), next(trains[1])
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_allclose(norm(b["image"]), a["image"], atol=1e-6, rtol=0)

    # Full recipe: the same batches, mixup blends rounded to whole pixel levels.
    f32, u8 = _digits_config(digits_dir, random_erasing=0.0), _digits_config(digits_dir, "uint8", random_erasing=0.0)
    a = next(data.make_train_iterator(f32, start_step=5, process_index=0, process_count=1))
    b = next(data.make_train_iterator(u8, start_step=5, process_index=0, process_count=1))
    np.testing.assert_array_equal(a["label"], b["label"])
    level = 1 / 255 / min(IMAGENET_STD)  # one pixel level, normalised
    np.testing.assert_allclose(norm(b["image"]), a["image"], atol=0.5 * level + 1e-5, rtol=0)

    # Random erasing in every image (the uint8 stream erases in pixel space): the pixels
    # are the float32 stream's, denormalised in float64, clipped and rounded (<= 0.5 level).
    f32, u8 = _digits_config(digits_dir, random_erasing=1.0), _digits_config(digits_dir, "uint8", random_erasing=1.0)
    a = next(data.make_train_iterator(f32, start_step=2, process_index=0, process_count=1))
    b = next(data.make_train_iterator(u8, start_step=2, process_index=0, process_count=1))
    raw = (a["image"] * np.float64(IMAGENET_STD) + np.float64(IMAGENET_MEAN)) * 255
    assert ((raw < -1) | (raw > 256)).mean() > 1e-3  # boxes of N(0, 1) noise were drawn
    expected = np.clip(raw, 0, 255)
    np.testing.assert_allclose(b["image"].astype(np.float64), expected, atol=0.5 + 1e-3, rtol=0)


# ----------------------------------------------------------------------------- metrics


def _wait_uploads(writer, n, timeout=30.0):
    import time

    deadline = time.time() + timeout
    while len(writer.uploads) < n:
        assert time.time() < deadline, writer.uploads
        time.sleep(0.01)


def test_remote_metrics_never_rewrite_and_plot(tmp_path):
    """On a non-local TF file system (ram://) each upload holds only the new records:
    the bytes written per record stay the same however long the run; read_metrics and
    the plot command read it back."""
    import tensorflow as tf

    from dmformer_jax import plot
    from dmformer_jax.train.logger import MetricsWriter, read_metrics

    workdir = f"ram://pod_metrics_{os.getpid()}/run"
    writer = MetricsWriter(workdir, flush_secs=3600)
    metrics = {"loss": 1.25, "top1": 0.5, "lr": 1e-3, "grad_norm": 2.0, "img_per_sec": 100.0}
    for step in range(1, 41):
        writer.write(step, "train", metrics)
        writer.flush()  # one upload per record: the worst case for growth
    writer.write(41, "eval", {"loss": 1.0, "top1": 0.6, "top5": 0.9})
    writer.close()
    # Every upload is one record (~140 bytes; the digits of the step and time vary a
    # little): re-writing the whole file would make the 40th upload ~40x the first.
    assert len(writer.uploads) == 41
    train = writer.uploads[:40]
    assert max(train) - min(train) <= 8, writer.uploads
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 42)) and records[-1]["split"] == "eval"
    assert tf.io.gfile.listdir(workdir + "/tensorboard")

    # A resumed run on the same workdir continues the part numbering.
    writer = MetricsWriter(workdir, flush_secs=3600)
    writer.write(42, "train", metrics)
    writer.close()
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, 43))

    out = plot.plot_run(workdir)
    assert out == workdir + "/curves.png"
    assert tf.io.gfile.GFile(out, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_write_does_not_wait_for_storage(tmp_path, monkeypatch):
    """A stuck file system holds up the writer thread, never `write` (the training
    thread): all 10 writes return while storage has not finished a single record. (No
    wall-clock bound: a loaded CI machine can stall any thread for a while.)"""
    import threading

    from dmformer_jax.train import logger

    writer = logger.MetricsWriter(str(tmp_path), flush_secs=3600)
    real = writer._record
    storage_free, written = threading.Event(), []

    def stuck_storage(*args):
        storage_free.wait(timeout=2)  # a blocking `write` would wait here, then record
        real(*args)
        written.append(args)

    monkeypatch.setattr(writer, "_record", stuck_storage)
    for step in range(10):
        writer.write(step, "train", {"loss": 1.0})
    assert written == [], f"write waited for storage ({len(written)} records written before it returned)"
    storage_free.set()
    writer.close()
    assert [r["step"] for r in logger.read_metrics(str(tmp_path))] == list(range(10))


# ----------------------------------------------------------------------------- start-up speed


def test_compilation_cache_and_host_options(monkeypatch, tmp_path):
    import jax

    from configs.common import get_base_config
    from dmformer_jax.data import pipeline
    from dmformer_jax.train import loop

    config = get_base_config()
    assert config.device_prefetch == 2 and config.compilation_cache_dir is None
    before = jax.config.jax_compilation_cache_dir
    assert loop.enable_compilation_cache(config) is None  # None leaves JAX's setting alone
    assert jax.config.jax_compilation_cache_dir == before
    config.compilation_cache_dir = str(tmp_path / "xla")
    try:
        assert loop.enable_compilation_cache(config) == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)

    cpu = pipeline._options(config)  # this test runs on CPU: TF keeps its defaults
    assert cpu.threading.private_threadpool_size is None and cpu.threading.max_intra_op_parallelism is None
    monkeypatch.setattr("jax.default_backend", lambda: "tpu")
    tpu = pipeline._options(config)
    assert tpu.threading.private_threadpool_size == 48 and tpu.threading.max_intra_op_parallelism == 1
    assert tpu.deterministic


# ----------------------------------------------------------------------------- rehearsal

REHEARSAL_STEPS = 12
# The pod recipe (configs/dmformer_s.py: RandAugment, mixup/cutmix, random erasing,
# label smoothing, AdamW, cosine) with a tiny model, 32x32 digits and a small batch.
REHEARSAL = [
    "--config", "configs/dmformer_s.py",
    "--config.model.name=dmformer_tiny_test", "--config.data.name=dmformer_digits",
    "--config.data.image_size=32", "--config.data.shuffle_buffer=64",
    "--config.batch_size=16", "--config.eval_batch_size=16",
    f"--config.num_train_steps={REHEARSAL_STEPS}", "--config.optim.warmup_epochs=0.0",
    "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000",
    "--config.eval_every_steps=1000", "--config.eval_at_end=False",
    "--config.log_all_processes=True",
    # XLA's own convs: the rehearsal checks pod mechanics, not kernels (tested elsewhere),
    # and they compile 2.5x faster than the CPU defaults (6 s vs 15 s for this model's
    # gradient), which 12 compiles on 2 cores feel.
    "--config.model.depthwise_impl=xla", "--config.model.conv_impl=xla",
]
PROCESSES, DEVICES_PER_PROCESS = 4, 2


def final_state(workdir):
    """``(step, state, meta)`` of the newest checkpoint as NumPy arrays, read on one
    device of this process whatever topology (processes, devices) wrote it."""
    import jax
    import orbax.checkpoint as ocp

    from dmformer_jax.checkpoint import read_meta

    meta, step = read_meta(str(workdir))
    path = os.path.join(str(workdir), "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    shapes = checkpointer.metadata(path)
    shapes = getattr(shapes, "item_metadata", shapes)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), shapes)
    return step, jax.tree.map(np.asarray, checkpointer.restore(path, target)), meta


class _Pod:
    """4 train.py processes x 2 CPU devices (gloo), outputs read by threads."""

    def __init__(self, env, workdir):
        import threading

        from subprocess_runs import HEARTBEAT_FLAG, train_cmd

        port = _free_port()
        e = dict(env, XLA_FLAGS=xla_flags(DEVICES_PER_PROCESS))
        for key in [k for k in e if k.startswith(("SLURM_", "OMPI_"))]:
            del e[key]
        self.procs, self.lines, self.threads = [], [], []
        for i in range(PROCESSES):
            cmd = train_cmd(env, workdir, f"--config.coordinator_address=127.0.0.1:{port}",
                            f"--config.num_processes={PROCESSES}", f"--config.process_id={i}", HEARTBEAT_FLAG,
                            base=REHEARSAL)
            p = subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1)
            lines: list[str] = []
            t = threading.Thread(target=lambda p=p, lines=lines: [lines.append(ln) for ln in p.stdout], daemon=True)
            t.start()
            self.procs.append(p)
            self.lines.append(lines)
            self.threads.append(t)

    def wait_for(self, process, prefix, timeout=600):
        import time

        deadline = time.time() + timeout
        while not any(ln.startswith(prefix) for ln in self.lines[process]):
            assert time.time() < deadline and self.procs[process].poll() is None, self.tails()
            time.sleep(0.05)

    def finish(self, timeout=600):
        try:
            codes = [p.wait(timeout=timeout) for p in self.procs]
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
        for t in self.threads:
            t.join(timeout=30)
        return codes

    def text(self, i):
        return "".join(self.lines[i])

    def tails(self, chars=2500):
        """Every process's exit status and last output (for assertion messages), without
        the native stack frames (``@ 0x...``) an abort prints, which would fill it."""
        def tail(i):
            return "".join(ln for ln in self.lines[i] if not ln.lstrip().startswith("@ 0x"))[-chars:]

        return "\n".join(f"--- process {i} (rc {p.poll()}):\n{tail(i)}" for i, p in enumerate(self.procs))

    def step_lines(self, i):
        """``step s/T (..) | loss | top1 | lr | grad_norm`` of process i (without the
        timing fields, which differ between hosts)."""
        prefix = "" if i == 0 else f"[process {i}] "
        out = []
        for ln in self.lines[i]:
            if ln.startswith(prefix + "step "):
                out.append(ln[len(prefix):].split(" | ")[:5])
        return out


@pytest.mark.slow
def test_pod_rehearsal_4_processes_preempt_one_resume(tmp_path_factory):
    """4 processes x 2 devices on the dmformer_s recipe: SIGTERM to ONE process makes
    all save the same step and exit 143; the rerun ends with the state of an
    uninterrupted run; every host logs the same steps and metrics; only process 0
    writes metrics and TensorBoard files."""
    import signal

    from subprocess_runs import assert_same_state, session_env

    env = session_env(tmp_path_factory.getbasetemp())
    full, interrupted = tmp_path_factory.mktemp("pod_full"), tmp_path_factory.mktemp("pod_preempted")

    pod = _Pod(env, full)
    assert pod.finish() == [0] * PROCESSES, pod.tails()
    assert f"8 cpu device(s), {PROCESSES} process(es)" in pod.text(0)
    reference = pod.step_lines(0)
    assert [int(s[0].split()[1].split("/")[0]) for s in reference] == list(range(1, REHEARSAL_STEPS + 1))
    for i in range(1, PROCESSES):
        assert pod.step_lines(i) == reference, f"process {i} logged other steps/metrics"

    pod = _Pod(env, interrupted)
    pod.wait_for(0, "step 3/")
    pod.procs[2].send_signal(signal.SIGTERM)  # one host gets the preemption notice
    assert pod.finish() == [143] * PROCESSES, pod.tails()
    stopped = set()
    for i in range(PROCESSES):
        found = [ln for ln in pod.lines[i] if ln.startswith("preempted at step ")]
        assert found, pod.text(i)[-2000:]
        stopped.add(int(found[0].split("preempted at step ")[1].split(":")[0]))
    assert len(stopped) == 1, stopped  # every process saved the same step
    (stop,) = stopped
    assert 3 <= stop < REHEARSAL_STEPS
    step, state, _ = final_state(interrupted)
    assert step == stop == int(state["step"])

    pod = _Pod(env, interrupted)
    assert pod.finish() == [0] * PROCESSES, pod.tails()
    assert f"resuming from checkpoint step {stop}" in pod.text(0)
    for i in range(1, PROCESSES):
        assert f"[process {i}] resuming from checkpoint step {stop}" in pod.text(i)
        assert pod.step_lines(i) == pod.step_lines(0)
    assert pod.step_lines(0) == reference[stop:]  # same losses as the uninterrupted run

    _, a, _ = final_state(full)
    _, b, _ = final_state(interrupted)
    for key in ("params", "batch_stats", "opt_state"):
        assert_same_state(a[key], b[key], atol=1e-6)

    # Files: metrics once per step, TensorBoard from process 0 only.
    from dmformer_jax.train.logger import read_metrics

    steps = [r["step"] for r in read_metrics(str(full)) if r["split"] == "train"]
    assert steps == list(range(1, REHEARSAL_STEPS + 1))
    events = os.listdir(full / "tensorboard")
    assert len({name.split(".")[-3] for name in events}) == 1, events  # one writer pid
