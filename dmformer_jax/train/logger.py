"""Run logging: a progress line on stdout, ``metrics.jsonl`` and TensorBoard events.

Only process 0 writes (every process holds the same replicated metrics).
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import queue
import sys
import threading
import time
from typing import Mapping, Sequence

import jax

from dmformer_jax.paths import is_url

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
PARTS_SUBDIR = "metrics_parts"  # remote workdirs: metrics_parts/NNNNNNNN.jsonl


def is_chief() -> bool:
    """Whether this is the process that logs and writes files (process 0)."""
    return jax.process_index() == 0


_LOG_ALL_PROCESSES = False


def log_all_processes(enabled: bool) -> None:
    """Whether every process prints `log` lines (``[process k]`` prefixed), not only 0."""
    global _LOG_ALL_PROCESSES
    _LOG_ALL_PROCESSES = bool(enabled)


def log(message: str) -> None:
    """One line on stdout from process 0, flushed at once (long runs are tailed);
    from every process, prefixed ``[process k]``, after ``log_all_processes(True)``."""
    if is_chief():
        print(message, flush=True)
    elif _LOG_ALL_PROCESSES:
        print(f"[process {jax.process_index()}] {message}", flush=True)


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` for a non-negative duration."""
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def progress_line(
    step: int,
    total: int,
    metrics: Mapping[str, float],
    img_per_sec: float,
    eta_s: float,
    task_fields: Sequence[str] = (),
) -> str:
    """``step 120/600 (20%) | loss 1.234 | top1 56.3% | lr 1.2e-03 | grad_norm 0.87 | 812 img/s | ETA 0:03:21``.

    ``metrics`` holds ``loss``, ``lr`` and ``grad_norm``; ``task_fields`` (here
    ``['top1 56.3%']``, from `dmformer_jax.tasks.Task.progress_fields`) go after the loss.
    """
    fields = [
        f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)",
        f"loss {metrics['loss']:.4f}",
        *task_fields,
        f"lr {metrics['lr']:.2e}",
        f"grad_norm {metrics['grad_norm']:.3g}",
        f"{img_per_sec:,.0f} img/s",
        f"ETA {format_eta(eta_s)}",
    ]
    return " | ".join(fields)


def _next_part(parts_dir: str, tf) -> int:
    """The number after the highest ``NNNNNNNN.jsonl`` in ``parts_dir`` (0 if none)."""
    if not tf.io.gfile.isdir(parts_dir):
        return 0
    numbers = [int(n.split(".")[0]) for n in tf.io.gfile.listdir(parts_dir) if n.split(".")[0].isdigit()]
    return max(numbers, default=-1) + 1


class MetricsWriter:
    """Appends ``{"step", "split", ...}`` records to ``metrics.jsonl`` and TensorBoard.

    ``split`` is ``'train'`` or ``'eval'``; TensorBoard tags are ``split/name``.

    `write` only queues the record: a background thread writes it, so a slow file
    system (``gs://`` from process 0) never holds up the training step (the other
    hosts would wait for process 0 at the next all-reduce). Every write's cost is
    independent of the run's length:

    - local workdir: each record is appended to ``metrics.jsonl`` at once; TensorBoard
      is flushed every ``flush_secs``.
    - remote workdir (``gs://``, any TF file system without cheap appends): the records
      of each ``flush_secs`` period are uploaded as one new file
      ``metrics_parts/NNNNNNNN.jsonl`` (`read_metrics` joins them), and
      TensorBoard starts a new event file each period, so no file is re-written.

    A failed write is retried at the next period with a warning; it never stops the run.
    """

    def __init__(self, workdir: str, *, flush_secs: float = 60.0):
        self._enabled = is_chief()
        self._workdir = workdir
        self._path = os.path.join(workdir, METRICS_FILE)
        self._remote = is_url(workdir)
        self._flush_secs = float(flush_secs)
        self._tb = None
        self._pending: list[str] = []  # remote: records since the last upload
        self.uploads: list[int] = []  # remote: bytes of each upload (constant per record)
        if not self._enabled:
            return
        import tensorflow as tf  # already a dependency (tf.data); imported late: it is slow

        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        # What tensorboard.summary.scalar writes, without needing the tensorboard
        # package (tensorflow-cpu does not install it): a float32 scalar tagged for
        # TensorBoard's "scalars" plugin.
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR,
        )
        self._parts = os.path.join(workdir, PARTS_SUBDIR)
        self._part = _next_part(self._parts, tf) if self._remote else 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="metrics-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a run that raises still writes what it queued

    # --- training thread -------------------------------------------------------

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Queues scalar ``metrics`` of ``split`` at ``step`` (returns at once)."""
        if not self._enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._queue.put((int(step), split, time.time(), values))

    def flush(self) -> None:
        """Blocks until every queued record is written and uploaded (remote)."""
        if self._enabled and self._thread.is_alive():
            done = threading.Event()
            self._queue.put(("flush", done))
            done.wait()

    def close(self) -> None:
        """Writes everything queued, uploads and closes (idempotent)."""
        if self._enabled and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    # --- writer thread ---------------------------------------------------------

    def _run(self) -> None:
        deadline = time.monotonic() + self._flush_secs
        while True:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                item = "period"
            if item is None:
                self._period()
                if self._tb is not None:
                    self._tb.close()
                return
            if item == "period" or isinstance(item, tuple) and item[0] == "flush":
                self._period()
                deadline = time.monotonic() + self._flush_secs
                if item != "period":
                    item[1].set()
                continue
            try:
                self._record(*item)
            except Exception as e:  # noqa: BLE001  (logging must never stop training)
                stderr(f"warning: could not write metrics of step {item[0]} ({e}); continuing")
            if time.monotonic() >= deadline:
                self._period()
                deadline = time.monotonic() + self._flush_secs

    def _record(self, step: int, split: str, t: float, values: dict[str, float]) -> None:
        line = json.dumps({"step": step, "split": split, "time": t, **values})
        if self._remote:
            self._pending.append(line)
        else:
            with open(self._path, "a") as f:
                f.write(line + "\n")
        tf = self._tf
        if self._tb is None:
            self._tb = tf.summary.create_file_writer(
                os.path.join(self._workdir, TENSORBOARD_SUBDIR), flush_millis=int(self._flush_secs * 1000)
            )
        with self._tb.as_default(step=step):
            for name, value in values.items():
                tf.summary.write(f"{split}/{name}", tf.constant(value, tf.float32), metadata=self._metadata)

    def _period(self) -> None:
        """End of a flush period: upload the pending records, flush/rotate TensorBoard."""
        try:
            if self._remote and self._pending:
                text = "\n".join(self._pending) + "\n"
                self._tf.io.gfile.makedirs(self._parts)
                with self._tf.io.gfile.GFile(os.path.join(self._parts, f"{self._part:08d}.jsonl"), "w") as f:
                    f.write(text)
                self.uploads.append(len(text.encode()))
                self._part += 1
                self._pending = []
            if self._tb is not None:
                if self._remote:  # closed files are uploaded once; the next period opens a new one
                    self._tb.close()
                    self._tb = None
                else:
                    self._tb.flush()
        except Exception as e:  # noqa: BLE001
            stderr(f"warning: could not upload metrics ({e}); retrying in {self._flush_secs:.0f}s")


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``WORKDIR/metrics.jsonl`` (and, for a remote workdir, its upload
    parts ``metrics_parts/*.jsonl``), in order; empty if absent.

    Works on any path TensorFlow's file systems handle (local, ``gs://``, ...).
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not is_url(workdir):
        texts = [open(path).read()] if os.path.exists(path) else []
    else:
        import tensorflow as tf

        gfile = tf.io.gfile
        texts = [gfile.GFile(path).read()] if gfile.exists(path) else []
        parts = os.path.join(workdir, PARTS_SUBDIR)
        if gfile.isdir(parts):
            names = sorted(n for n in gfile.listdir(parts) if n.endswith(".jsonl"))
            texts += [gfile.GFile(os.path.join(parts, n)).read() for n in names]
    return [json.loads(line) for text in texts for line in text.splitlines() if line.strip()]


def stderr(message: str) -> None:
    """One line on stderr (errors)."""
    print(message, file=sys.stderr, flush=True)
