"""The API the trainer calls: `dataset_info`, `make_train_iterator`, `make_eval_iterator`.

All three read ``config.data`` / ``config.augment`` (configs/common.py) and raise
`dmformer_jax.errors.DataError` (one line: what is wrong and how to fix it) for a
missing dataset, data_dir or manual_dir, or an unusable batch / shard layout.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dmformer_jax.data import digits  # noqa: F401  (registers 'dmformer_digits' with TFDS)
from dmformer_jax.data import pipeline
from dmformer_jax.data.pipeline import transfer_dtype  # noqa: F401  (part of this API)
from dmformer_jax import recipe
from dmformer_jax.errors import DataError, first_line
from dmformer_jax.paths import is_url, resolve_optional

# Datasets this package can build by itself, offline, on first use.
_SELF_BUILT = ("dmformer_digits",)
_ILSVRC_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Sizes the trainer needs (from the prepared TFDS dataset)."""

    name: str
    num_classes: int
    num_train_examples: int
    num_eval_examples: int


# What this (classification) data module reads from a TFDS dataset.
FEATURES = ("image", "label")

def _data_dir(config) -> str | None:
    return resolve_optional(config.data.data_dir)


def _manual_dir(config) -> str | None:
    return resolve_optional(config.data.manual_dir)


def _require_manual_dir(manual_dir: str, name: str) -> None:
    if not tf.io.gfile.isdir(manual_dir):
        raise DataError(
            f"data.manual_dir {manual_dir!r} does not exist; point --config.data.manual_dir at the folder "
            f"with the {name} archives"
        )


def _prepare(builder: tfds.core.DatasetBuilder, config) -> None:
    """Prepares ``builder`` if this package knows how to do it offline; DataError otherwise."""
    name, data_dir = config.data.name, _data_dir(config)
    where = data_dir or tfds.core.constants.DATA_DIR
    if name in _SELF_BUILT:
        try:
            builder.download_and_prepare()
        except Exception:
            # Several processes may build it into one data_dir at once: if another one
            # finished first (TFDS renames its temporary folder into place), use its copy.
            if not tfds.builder(name, data_dir=data_dir).is_prepared():
                raise
        return
    manual_dir = _manual_dir(config)
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) and manual_dir:
        _require_manual_dir(manual_dir, name)
        if name == "imagenet2012":
            missing = [t for t in _ILSVRC_TARS if not tf.io.gfile.exists(os.path.join(manual_dir, t))]
            if missing:
                raise DataError(
                    f"data.manual_dir {manual_dir!r} lacks {', '.join(missing)}; put ILSVRC2012_img_train.tar and "
                    "ILSVRC2012_img_val.tar (from image-net.org) there"
                )
        config_dl = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(download_config=config_dl)
        except Exception as e:  # a corrupt archive etc.: say which dataset and where
            raise DataError(f"preparing {name} from manual_dir {manual_dir!r} failed: {type(e).__name__}: "
                            f"{first_line(e, None)}; check the archives") from e
        return
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        raise DataError(
            f"dataset {name!r} is not prepared in data_dir {where!r}; set --config.data.manual_dir to the folder "
            f"with its archives (for imagenet2012: {' and '.join(_ILSVRC_TARS)}) or --config.data.data_dir to "
            "where it is prepared"
        )
    raise DataError(
        f"dataset {name!r} is not prepared in data_dir {where!r}; run `tfds build {name} --data_dir=...` on a "
        "machine with network access, or set --config.data.data_dir to where it is prepared"
    )


def get_builder(config) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder for ``config.data.name`` (prepared here if needed)."""
    name, data_dir = config.data.name, _data_dir(config)
    if data_dir and not is_url(data_dir) and not os.path.isdir(data_dir):
        manual_dir = _manual_dir(config)
        if manual_dir:
            _require_manual_dir(manual_dir, name)
        elif name not in _SELF_BUILT:
            raise DataError(f"data.data_dir {data_dir!r} does not exist; set --config.data.data_dir to the TFDS "
                            "data folder (local or gs://), or also set --config.data.manual_dir to prepare it there")
        # First run: the dataset is prepared into it (through a symlink, into its target).
        os.makedirs(os.path.realpath(data_dir), exist_ok=True)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown TFDS dataset {name!r}; set --config.data.name to a TFDS name such as "
                        "'imagenet2012' or 'dmformer_digits'") from None
    if not builder.is_prepared():
        _prepare(builder, config)
        builder = tfds.builder(name, data_dir=data_dir)  # reads the prepared dataset's info
    for field in ("train_split", "eval_split"):
        split = config.data[field]
        try:
            builder.info.splits[split]
        except (KeyError, ValueError, AssertionError) as e:
            raise DataError(f"data.{field} {split!r} is not a split of {name} (available: "
                            f"{', '.join(builder.info.splits.keys())}); fix --config.data.{field}") from e
    missing = [f for f in FEATURES if f not in builder.info.features]
    if missing:
        raise DataError(f"dataset {name!r} has no {', '.join(repr(f) for f in missing)} feature(s), which image "
                        "classification needs; use a classification dataset (or the data module of your task)")
    return builder


def dataset_info(config) -> DatasetInfo:
    """Sizes of ``config.data``'s dataset; prepares it first if needed (digits: seconds)."""
    builder = get_builder(config)
    splits = builder.info.splits
    return DatasetInfo(
        name=config.data.name,
        num_classes=int(builder.info.features["label"].num_classes),
        num_train_examples=int(splits[config.data.train_split].num_examples),
        num_eval_examples=int(splits[config.data.eval_split].num_examples),
    )


def make_train_iterator(config, *, start_step: int, process_index: int,
                        process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """Infinite per-process training batches, the first one for step ``start_step``.

    Yields dict(image float32 [b, S, S, 3] normalised with data.mean/std (uint8
    pixels, to be normalised on the device, when `transfer_dtype` is uint8),
    label float32 [b, num_classes] soft targets), b = batch_size // process_count,
    S = data.image_size. Process p holds shards [p*N/P, (p+1)*N/P) of N = data.num_shards,
    so the global batch at a step is the same for any process count.
    """
    pipeline.check_process(process_index, process_count)
    if start_step < 0:
        raise DataError(f"start_step={start_step} is negative")
    shards = pipeline.num_shards(config, process_count)
    builder = get_builder(config)
    local = pipeline.local_shards(builder, config, shards, process_index, process_count)
    return pipeline.train_iterator(
        builder,
        config,
        shards=local,
        num_shards=shards,
        shard_batch=config.batch_size // shards,
        num_classes=int(builder.info.features["label"].num_classes),
        start_step=int(start_step),
    )


def eval_crop_pct(config) -> float:
    """``config.data.crop_pct``, or the recipe's value for the variant when None."""
    return recipe.eval_crop_pct(config.data.crop_pct, config.model.name)


def make_eval_iterator(config, *, process_index: int,
                       process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """One fresh pass over the whole eval split, this process's part, padded.

    Yields dict(image float32 [b, S, S, 3] (uint8 pixels when `transfer_dtype` is
    uint8), label int32 [b], mask bool [b]) with
    b = eval_batch_size // process_count (eval_batch_size None: batch_size) and
    S = data.eval_image_size (None: image_size). Every eval example appears in exactly
    one process with mask True; every process yields the same number of batches.
    """
    pipeline.check_process(process_index, process_count)
    global_batch = config.eval_batch_size or config.batch_size
    if global_batch % process_count:
        raise DataError(f"eval batch size {global_batch} does not divide by the {process_count} processes; set "
                        f"--config.eval_batch_size to a multiple of {process_count}")
    batch = global_batch // process_count
    builder = get_builder(config)
    parts = tfds.even_splits(config.data.eval_split, process_count)
    sizes = [builder.info.splits[p].num_examples for p in parts]
    size = int(config.data.eval_image_size or config.data.image_size)
    return pipeline.eval_iterator(
        builder,
        config,
        split=parts[process_index],
        size=size,
        crop_pct=eval_crop_pct(config),
        batch=batch,
        num_batches=pipeline.eval_num_batches(sizes, batch),
    )
