"""A synthetic stand-in for `dmformer_jax.data` (same API) for trainer unit tests.

Class ``c`` images are noise plus a bright square at a class-specific corner, so a tiny
model learns them in a few steps. Batch ``s`` is a pure function of (seed, s): exact
resume and process-count independence hold by construction.
"""

from __future__ import annotations

import collections

import numpy as np

NUM_CLASSES = 4
NUM_TRAIN = 256
NUM_EVAL = 50  # not a multiple of the eval batch: exercises padding and the mask

DatasetInfo = collections.namedtuple(
    "DatasetInfo", ["name", "num_classes", "num_train_examples", "num_eval_examples"]
)


def dataset_info(config):
    return DatasetInfo("synthetic", NUM_CLASSES, NUM_TRAIN, NUM_EVAL)


def _images(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    x = rng.normal(0.0, 1.0, (len(labels), size, size, 3)).astype(np.float32)
    half = size // 2
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        x[i, r * half:(r + 1) * half, col * half:(col + 1) * half, :] += 2.0
    return x


def make_train_iterator(config, *, start_step, process_index, process_count):
    size = int(config.data.image_size)
    per_process = config.batch_size // process_count
    step = start_step
    while True:
        rng = np.random.default_rng([int(config.seed), step])
        labels = rng.integers(0, NUM_CLASSES, config.batch_size)
        images = _images(rng, labels, size)
        soft = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
        sl = slice(process_index * per_process, (process_index + 1) * per_process)
        yield {"image": images[sl], "label": soft[sl]}
        step += 1


def make_eval_iterator(config, *, process_index, process_count):
    size = int(config.data.image_size)
    batch = int(config.eval_batch_size or config.batch_size)
    rng = np.random.default_rng([int(config.seed), 10**6])
    labels = rng.integers(0, NUM_CLASSES, NUM_EVAL)
    images = _images(rng, labels, size)
    per_process = batch // process_count
    for start in range(0, NUM_EVAL, batch):
        idx = np.arange(start, start + batch)
        mask = idx < NUM_EVAL
        idx = np.where(mask, idx, 0)
        sl = slice(process_index * per_process, (process_index + 1) * per_process)
        yield {"image": images[idx][sl], "label": labels[idx][sl].astype(np.int32), "mask": mask[sl]}


def tiny_config(**overrides):
    """The base config shrunk to a few-second CPU run on the synthetic data
    (``overrides``: dotted keys, as in `tiny_configs.tiny_config`)."""
    from tiny_configs import tiny_config as base

    return base("synthetic", **{
        "batch_size": 16,
        "eval_batch_size": 16,
        "num_train_steps": 6,
        "optim.base_lr": 0.05,
        "optim.warmup_epochs": 0.0,
        "log_every_steps": 2,
        "checkpoint_every_steps": 3,
        "eval_every_steps": 1000,
        "async_checkpointing": False,
        **overrides,
    })
