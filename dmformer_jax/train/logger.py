"""Run logging: a progress line on stdout, ``metrics.jsonl`` and TensorBoard events.

Only process 0 writes (every process holds the same replicated metrics).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Mapping

import jax

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"


def is_chief() -> bool:
    """Whether this is the process that logs and writes files (process 0)."""
    return jax.process_index() == 0


def log(message: str) -> None:
    """One line on stdout from process 0, flushed at once (long runs are tailed)."""
    if is_chief():
        print(message, flush=True)


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` for a non-negative duration."""
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def progress_line(step: int, total: int, metrics: Mapping[str, float], img_per_sec: float, eta_s: float) -> str:
    """``step 120/600 (20%) | loss 1.234 | top1 56.3% | lr 1.2e-03 | grad_norm 0.87 | 812 img/s | ETA 0:03:21``."""
    return (
        f"step {step}/{total} ({100 * step / max(total, 1):.0f}%) | loss {metrics['loss']:.4f} | "
        f"top1 {100 * metrics['top1']:.1f}% | lr {metrics['lr']:.2e} | grad_norm {metrics['grad_norm']:.3g} | "
        f"{img_per_sec:,.0f} img/s | ETA {format_eta(eta_s)}"
    )


class MetricsWriter:
    """Appends ``{"step", "split", ...}`` records to ``metrics.jsonl`` and TensorBoard.

    ``split`` is ``'train'`` or ``'eval'``; TensorBoard tags are ``split/name``.
    """

    def __init__(self, workdir: str):
        self._enabled = is_chief()
        self._path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        self._remote = "://" in workdir  # gs:// etc.: no append, so rewrite the file
        self._lines: list[str] = []
        if self._enabled:
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
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, TENSORBOARD_SUBDIR))
            if self._remote and tf.io.gfile.exists(self._path):
                with tf.io.gfile.GFile(self._path) as f:
                    self._lines = f.read().splitlines()

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Records scalar ``metrics`` of ``split`` at ``step``."""
        if not self._enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        line = json.dumps(record)
        if self._remote:
            self._lines.append(line)
            with self._tf.io.gfile.GFile(self._path, "w") as f:
                f.write("\n".join(self._lines) + "\n")
        else:
            with open(self._path, "a") as f:
                f.write(line + "\n")
        with self._tb.as_default(step=int(step)):
            for name, value in metrics.items():
                self._tf.summary.write(
                    f"{split}/{name}", self._tf.constant(float(value), self._tf.float32),
                    metadata=self._metadata,
                )
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``WORKDIR/metrics.jsonl``, in order (empty if absent)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def stderr(message: str) -> None:
    """One line on stderr (errors)."""
    print(message, file=sys.stderr, flush=True)
