"""tf.data streams: deterministic, resumable training shards and a padded eval split.

Training: the train split is cut into ``num_shards`` even parts (`tfds.even_splits`);
shard j is an independent infinite stream. Epoch e of shard j shuffles its TFRecord
file instructions and then its records with seeds derived from (seed, j, e) (epochs
are seeded one by one, so a resume at any step reads at most one epoch of raw records
to get back to its place instead of every epoch before it). Each raw record carries
its position in the shard stream; every random choice of its augmentation is seeded
from (seed, j, position), and the batch mixing of shard batch t from (seed, j, t).
Nothing depends on TF's global RNG or on how many processes read the shards.

Undecodable images are dropped right after decoding (`ignore_errors`) and counted
by `DecodeErrorCounter` from the gaps they leave in the positions.
"""

from __future__ import annotations

import math
import threading
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from dmformer_jax.data import augment as aug
from dmformer_jax.data.randaugment import rand_augment
from dmformer_jax.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
_FOREVER = 2**62


class DecodeErrorCounter:
    """Thread-safe count of images skipped because they could not be decoded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int) -> None:
        if n > 0:
            with self._lock:
                self._count += int(n)

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def reset(self) -> None:
        with self._lock:
            self._count = 0


DECODE_ERRORS = DecodeErrorCounter()


def decode_error_count() -> int:
    """Images skipped as undecodable by the iterators of this process so far."""
    return DECODE_ERRORS.count


def _graph_fn(fn):
    """Skips AutoGraph: these functions use TF control flow only, and converting them
    (RandAugment's 15 branches) costs seconds per trace."""
    return tf.autograph.experimental.do_not_convert(fn)


def transfer_dtype(config) -> str:
    """``config.data.transfer_dtype`` resolved: how images leave the host.

    ``'uint8'``: pixels, normalised on the device (a quarter of the bytes of float32);
    ``'float32'``: normalised on the host. ``'auto'`` (default) is uint8 on TPU/GPU and
    float32 on CPU (nothing to save there; keeps the CPU numerics exact).
    """
    value = config.data.get("transfer_dtype", "float32")
    if value == "auto":  # the trainer's backend decides
        return "uint8" if _accelerator_host() else "float32"
    if value not in ("uint8", "float32"):
        from dmformer_jax.errors import ConfigError

        raise ConfigError(f"config.data.transfer_dtype={value!r}; use 'auto', 'uint8' or 'float32'")
    return value


def _options(config=None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    if config is not None and _accelerator_host():
        # big_vision / the Flax ImageNet example: tf.data gets its own thread pool and
        # each op runs single-threaded (many ops in parallel beat one op on many
        # threads). Not on CPU hosts, where XLA's compute needs the same cores.
        d = config.data
        if d.get("private_threadpool_size"):
            options.threading.private_threadpool_size = int(d.private_threadpool_size)
        if d.get("max_intra_op_parallelism"):
            options.threading.max_intra_op_parallelism = int(d.max_intra_op_parallelism)
    return options


def _accelerator_host() -> bool:
    import jax

    from dmformer_jax.backends import on_accelerator

    return on_accelerator(jax.default_backend())


def _shard_records(builder: tfds.core.DatasetBuilder, split: str, seed: tf.Tensor, epoch: tf.Tensor,
                   shuffle_buffer: int) -> tf.data.Dataset:
    """One epoch of serialized records of ``split``, shuffled with seeds from (seed, epoch)."""
    instructions = builder.info.splits[split].file_instructions
    files = {
        "filename": [str(fi.filename) for fi in instructions],
        "skip": np.array([fi.skip for fi in instructions], np.int64),
        "take": np.array([fi.take for fi in instructions], np.int64),
    }
    s = aug.split_seed(aug.fold_seed(seed, epoch), 2)
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    file_ds = file_ds.shuffle(len(instructions), seed=s[0][0])
    records = file_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f["filename"]).skip(f["skip"]).take(f["take"]),
        cycle_length=min(16, len(instructions)),
        block_length=16,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return records.shuffle(shuffle_buffer, seed=s[1][0])


def _parser(builder: tfds.core.DatasetBuilder):
    features = builder.info.features
    decoders = {"image": tfds.decode.SkipDecoding()}

    def parse(serialized):
        example = features.deserialize_example(serialized, decoders=decoders)
        return example["image"], tf.cast(example["label"], tf.int32)

    return parse


def train_shard_dataset(
    builder: tfds.core.DatasetBuilder,
    config,
    *,
    shard: int,
    num_shards: int,
    shard_batch: int,
    num_classes: int,
    start_step: int,
) -> tf.data.Dataset:
    """Infinite batches of shard ``shard``: dict(image float32 [b,S,S,3] (uint8 pixels
    when `transfer_dtype` is uint8), label float32 [b,K], pos int64 [b]) where
    b = ``shard_batch``, starting at batch ``start_step``."""
    d, a = config.data, config.augment
    split = tfds.even_splits(d.train_split, num_shards)[shard]
    per_epoch = builder.info.splits[split].num_examples  # > 0: checked by make_train_iterator
    root = tf.constant([int(config.seed), shard], tf.int64)
    roots = aug.split_seed(root, 3)
    order_seed, example_seed, mix_seed = roots[0], roots[1], roots[2]
    start = int(start_step) * shard_batch
    first_epoch, offset = divmod(start, per_epoch)

    ds = tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(
        _graph_fn(lambda e: _shard_records(builder, split, order_seed, e, int(d.shuffle_buffer)))
    )
    ds = ds.skip(offset).enumerate(start=start)  # raw records only: resume never decodes
    parse = _parser(builder)
    size = int(d.image_size)

    def decode(pos, serialized):
        image, label = parse(serialized)
        s = aug.split_seed(aug.fold_seed(example_seed, pos), 4)
        image = aug.decode_and_random_crop(image, s[0], size, tuple(a.crop_scale), tuple(a.crop_ratio))
        return pos, image, label

    # uint8 transfer: the images stay float pixels (0..255) through erasing and mixing,
    # both of which commute with the (affine) normalisation, and are rounded once at the
    # end; normalising here and undoing it after mixing cost ~8% of the stream.
    uint8 = transfer_dtype(config) == "uint8"
    erase_in_pixels = dict(pixel_mean=d.mean, pixel_std=d.std) if uint8 else {}

    def augment(pos, image, label):
        s = aug.split_seed(aug.fold_seed(example_seed, pos), 4)
        if a.hflip:
            image = aug.random_flip(image, s[1])
        if a.randaugment:
            image = rand_augment(
                image, s[2], int(a.randaugment_num_ops), float(a.randaugment_magnitude),
                float(a.randaugment_magnitude_std),
            )
        elif a.color_jitter and a.color_jitter > 0:
            image = aug.color_jitter(image, s[2], float(a.color_jitter))
        if not uint8:
            image = aug.normalize(image, d.mean, d.std)
        if a.random_erasing and a.random_erasing > 0:
            image = aug.random_erasing(image, s[3], float(a.random_erasing), **erase_in_pixels)
        return pos, image, label

    ds = ds.map(_graph_fn(decode), num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors(log_warning=True)
    ds = ds.map(_graph_fn(augment), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(shard_batch, drop_remainder=True).enumerate(start=int(start_step))

    def mix(step, batch):
        pos, images, labels = batch
        images, soft = aug.mix_batch(
            images, labels, aug.fold_seed(mix_seed, step), num_classes,
            float(a.mixup_alpha), float(a.cutmix_alpha), float(a.mix_switch_prob), float(a.label_smoothing),
        )
        if uint8:
            # The float32 stream's images in pixels, rounded: exact without mixup and
            # random erasing; mixup blends round to the nearest level (<= 0.5/255) and
            # erasing noise is clipped to the pixel range (docs/training.md).
            images = tf.cast(aug.to_uint8_range(images), tf.uint8)
        return {"image": images, "label": soft, "pos": pos}

    return ds.map(_graph_fn(mix), num_parallel_calls=AUTOTUNE, deterministic=True)


def train_iterator(builder, config, *, shards: Sequence[int], num_shards: int, shard_batch: int,
                   num_classes: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches: the shards ``shards`` concatenated in order."""
    datasets = tuple(
        train_shard_dataset(builder, config, shard=j, num_shards=num_shards, shard_batch=shard_batch,
                            num_classes=num_classes, start_step=start_step)
        for j in shards
    )

    return zip_shard_batches(datasets, config, start_step=start_step, shard_batch=shard_batch)


def zip_shard_batches(datasets: Sequence[tf.data.Dataset], config, *, start_step: int,
                      shard_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches from its shards' datasets (each yielding dicts of
    ``(shard_batch, ...)`` arrays plus ``pos``, the examples' stream positions): every
    entry concatenated along axis 0 in shard order. Images the decoder dropped show as
    gaps in ``pos``; they are counted (`DECODE_ERRORS`) and logged, never fatal."""

    def concat(*parts):
        out = {k: tf.concat([p[k] for p in parts], axis=0) for k in parts[0] if k != "pos"}
        out["pos"] = tf.stack([p["pos"] for p in parts], axis=0)
        return out

    ds = tf.data.Dataset.zip(tuple(datasets)).map(_graph_fn(concat)).with_options(_options(config)).prefetch(AUTOTUNE)
    last = np.full(len(datasets), int(start_step) * shard_batch - 1, np.int64)
    for batch in ds.as_numpy_iterator():
        pos = batch.pop("pos")  # [num local shards, shard_batch]
        skipped = int(np.sum(pos[:, -1] - last - shard_batch))
        if skipped:
            logging.warning("skipped %d undecodable training image(s)", skipped)
            DECODE_ERRORS.add(skipped)
        last = pos[:, -1]
        yield batch


def check_process(process_index: int, process_count: int) -> None:
    """Raises `DataError` unless ``0 <= process_index < process_count``."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is outside 0..{process_count - 1}; "
                        "pass jax.process_index() and jax.process_count()")


def num_shards(config, process_count: int) -> int:
    """``config.data.num_shards`` (None: ``process_count``), checked against the layout."""
    shards = config.data.get("num_shards", None) or process_count
    if shards % process_count:
        raise DataError(f"data.num_shards={shards} does not divide by the {process_count} processes; set "
                        f"--config.data.num_shards to a multiple of {process_count}")
    if config.batch_size % shards:
        by = f"the {process_count} processes" if shards == process_count else f"data.num_shards={shards}"
        raise DataError(f"batch_size={config.batch_size} does not divide by {by}; use a "
                        f"batch_size that is a multiple of {shards}")
    return shards


def local_shards(builder, config, shards: int, process_index: int, process_count: int) -> range:
    """The shard indices process ``process_index`` reads; raises `DataError` when a
    shard of the train split would be empty."""
    split = config.data.train_split
    if min(builder.info.splits[s].num_examples for s in tfds.even_splits(split, shards)) == 0:
        raise DataError(f"data.num_shards={shards} is more than the {split!r} examples; "
                        "lower --config.data.num_shards")
    per_process = shards // process_count
    return range(process_index * per_process, (process_index + 1) * per_process)


def eval_iterator(builder, config, *, split: str, size: int, crop_pct: float, batch: int,
                  num_batches: int) -> Iterator[dict[str, np.ndarray]]:
    """``num_batches`` batches of ``split`` (this process's part of the eval split),
    padded with masked-out zeros: dict(image float32 [b,S,S,3] (uint8 pixels when
    `transfer_dtype` is uint8), label int32 [b], mask bool [b])."""
    d = config.data
    num_real = builder.info.splits[split].num_examples
    uint8 = transfer_dtype(config) == "uint8"

    def decode(example):
        image = aug.decode_image(example["image"])
        image = aug.eval_resize_crop(image, size, crop_pct)  # whole pixel values in 0..255
        image = tf.cast(image, tf.uint8) if uint8 else aug.normalize(image, d.mean, d.std)
        return {"image": image, "label": tf.cast(example["label"], tf.int32), "mask": tf.constant(True)}

    pad = tf.data.Dataset.from_tensors(
        {"image": tf.zeros([size, size, 3], tf.uint8 if uint8 else tf.float32), "label": tf.constant(0, tf.int32),
         "mask": tf.constant(False)}
    ).repeat()
    if num_real:
        ds = builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(options=_options(config), try_autocache=False),
        )
        ds = ds.map(_graph_fn(decode), num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.ignore_errors(log_warning=True).concatenate(pad)
    else:  # more processes than eval examples: this one only pads
        ds = pad
    ds = ds.batch(batch).take(num_batches).with_options(_options(config)).prefetch(AUTOTUNE)
    seen = 0
    for element in ds.as_numpy_iterator():
        seen += int(element["mask"].sum())
        yield element
    if seen < num_real:
        logging.warning("skipped %d undecodable eval image(s)", num_real - seen)
        DECODE_ERRORS.add(num_real - seen)


def eval_num_batches(split_sizes: Sequence[int], batch: int) -> int:
    """Batches every process yields: enough for the largest per-process part."""
    return max(1, math.ceil(max(split_sizes) / batch))
