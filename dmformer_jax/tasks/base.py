"""The task interface: what the trainer asks of a task (classification, segmentation, ...).

The train and eval steps, the loop, the logger and eval scheduling only call these
methods, so a new task is a new subclass plus one registry entry
(`dmformer_jax.tasks.TASKS`), never an edit of the loop. The idea is scenic's: the
task owns its model builder, loss and metrics; the trainer owns everything else
(optimizer, EMA, accumulation, checkpoints, NaN checks, preemption, logging).

Eval metrics are computed from SUMS: `Task.eval_sums` returns per-batch sums over
the real (``mask``-ed) examples, the loop adds them over the whole eval split on the
host, integers in int64 and floats in float64 (the eval step's outputs are global, so
the sums already span every process; one batch's int32 sums cannot overflow, a
split's can), and `Task.finalize` turns the totals into the reported metrics. Means, ratios and
confusion-matrix metrics (mIoU) are all exact this way: every example counts once.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from dmformer_jax.errors import DataError

Metrics = dict[str, jax.Array]
# ``{key: (shape, dtype)}``: the arrays of one global eval batch (for compiling ahead of time).
BatchSpec = dict[str, tuple[tuple[int, ...], Any]]


class Task(abc.ABC):
    """One training objective on top of a backbone.

    Attributes:
      name: the registry name (``config.task``).
      input_key: the batch entry fed to the model (normalised on the device when uint8).
      train_keys: entries every training batch must have.
      eval_keys: entries every eval batch must have (``mask``, bool ``(B,)``, marks the
        real examples of a padded batch).
    """

    name: str = ""
    input_key: str = "image"
    # The model's RNG streams in training: the train step passes the step's key as the
    # first and keys folded from it as the others (``fold_in(key, i)``).
    rng_names: tuple[str, ...] = ("drop_path", "dropout")
    train_keys: tuple[str, ...] = ("image",)
    eval_keys: tuple[str, ...] = ("image", "mask")

    # --- data -------------------------------------------------------------------

    def data_module(self) -> Any:
        """The input module the trainer reads by default (`dmformer_jax.data` for
        classification): ``dataset_info(config)``, ``make_train_iterator(config, *,
        start_step, process_index, process_count)``, ``make_eval_iterator(config, *,
        process_index, process_count)``, optionally ``transfer_dtype(config)`` and
        ``decode_error_count()``. Imported late (it imports TensorFlow)."""
        import dmformer_jax.data as data_lib

        return data_lib

    # --- model ------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self, config: ml_collections.ConfigDict, info: Any) -> nn.Module:
        """The model of ``config.model`` for a dataset described by ``info``
        (`dmformer_jax.data.DatasetInfo`: ``name``, ``num_classes``, sizes).

        Raises:
          ConfigError: an unusable model field (one line).
        """

    # --- inside the jitted steps -------------------------------------------------

    @abc.abstractmethod
    def loss(self, outputs: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        """``(loss, metrics)`` of one training batch: the scalar mean loss that is
        differentiated, and this task's extra scalar train metrics (batch means,
        e.g. ``{'top1': ...}``). The step adds ``loss``, ``lr`` and ``grad_norm``."""

    @abc.abstractmethod
    def eval_sums(self, outputs: jax.Array, batch: Mapping[str, jax.Array], mask: jax.Array) -> Metrics:
        """Per-batch SUMS over the real examples (``mask`` float32 ``(B,)``, 1 = real):
        arrays of any fixed shape (scalars, or e.g. a ``(K, K)`` confusion matrix)
        that add up over batches."""

    @abc.abstractmethod
    def finalize(self, totals: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The reported eval metrics (floats) from the `eval_sums` totals of the
        whole eval split (NumPy int64 / float64 arrays). These are the keys of ``metrics.jsonl``'s eval records."""

    # --- batches -----------------------------------------------------------------

    @abc.abstractmethod
    def eval_target_spec(self, config: ml_collections.ConfigDict, batch_size: int) -> BatchSpec:
        """Shapes of the eval batch's target entries (everything but image and mask)."""

    def eval_batch_spec(
        self, config: ml_collections.ConfigDict, batch_size: int, image_dtype: Any
    ) -> BatchSpec | None:
        """``{key: (shape, dtype)}`` of one global eval batch of ``batch_size`` examples,
        which the trainer compiles the eval step for ahead of time. A task whose eval
        batches come in several shapes returns one of them (the others are traced at
        their first batch) or None (no ahead-of-time compile of the eval step)."""
        size = int(config.data.eval_image_size or config.data.image_size)
        return {
            self.input_key: ((batch_size, size, size, 3), image_dtype),
            **self.eval_target_spec(config, batch_size),
            "mask": ((batch_size,), np.bool_),
        }

    def check_batch(self, batch: Mapping[str, Any], split: str) -> None:
        """Raises `DataError` (one line) when a ``split`` (``'train'``/``'eval'``)
        batch lacks an entry this task needs."""
        needed = self.train_keys if split == "train" else self.eval_keys
        missing = [k for k in needed if k not in batch]
        if missing:
            raise DataError(
                f"{split} batches have entries {sorted(batch)} but task {self.name!r} needs "
                f"{', '.join(needed)} (missing {', '.join(missing)}); use a dataset made for this task "
                "or set --config.task"
            )

    # --- logging -----------------------------------------------------------------

    @abc.abstractmethod
    def progress_fields(self, metrics: Mapping[str, float]) -> Sequence[str]:
        """This task's fields of the training progress line (after ``loss``), from
        the mean train metrics since the last line, e.g. ``['top1 56.3%']``."""

    @abc.abstractmethod
    def eval_summary(self, metrics: Mapping[str, float]) -> str:
        """One eval log line's body from `finalize`'s metrics, e.g.
        ``'top1 76.10% | top5 93.00% | loss 1.0000 | 50000 images'``."""
