"""Segmentation input: the prepared TFDS builder, deterministic training batches and a
bucketed, padded evaluation pass (the segmentation twin of `data.builders` / `data.pipeline`).

Training (mmseg's ADE20K recipe; every step is a config field, `seg_fields`):
  decode -> reduce_zero_label (0 -> 255, c -> c - 1; per dataset) -> random rescale to
  train_scale x U[ratio_range] keeping the ratio -> random crop S x S with
  cat_max_ratio (10 tries) -> horizontal flip (p 0.5) -> PhotoMetricDistortion ->
  normalise -> pad to S x S (image 0, label 255).
Streams, shards, seeds and resume work as the classification stream
(`dmformer_jax.data.pipeline`): batch s of shard j is a pure function of
(seed, j, s); every random choice of an example is seeded by (seed, j, position).

Evaluation: AlignResize (short side to eval_scale's short side, long side at most its
long side, then both rounded up to multiples of eval_size_divisor); the label stays at
the image's original size. To bound compiled shapes, examples are grouped by image
bucket (the resized image padded up to multiples of eval_bucket_step); a group's
labels are padded to its largest original size (rounded up to eval_label_bucket_step).
One batch shape per image bucket (`plan_eval`). Every
process computes the same plan from the image sizes, so all processes yield the same
number of batches with the same shapes at each step; `eval_shapes` lists them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dmformer_jax.data import augment as aug
from dmformer_jax.data import pipeline as cls_pipeline
from dmformer_jax.data.pipeline import transfer_dtype
from dmformer_jax.data.segmentation import shapes  # noqa: F401  (registers 'dmformer_seg_shapes')
from dmformer_jax.data.segmentation import transforms as T
from dmformer_jax.data.segmentation.ade20k import ARCHIVE as ADE_ARCHIVE
from dmformer_jax.data.segmentation.ade20k import missing_archive_message
from dmformer_jax.errors import DataError
from dmformer_jax.paths import is_url, resolve_optional

AUTOTUNE = tf.data.AUTOTUNE
_SELF_BUILT = ("dmformer_seg_shapes",)
_FOREVER = 2**62

# Fields this pipeline reads beyond the classification ones, with their defaults.
# None means "derived": see `seg_fields`.
DATA_DEFAULTS = {
    "reduce_zero_label": None,  # None: the dataset's REDUCE_ZERO_LABEL (ade20k True, shapes False)
    "train_scale": None,  # None: (4 S, S), S = image_size: (2048, 512) at 512
    "eval_scale": None,  # None: (4 E, E), E = eval_image_size or image_size
    "eval_size_divisor": 32,  # AlignResize: both sides rounded up to multiples of this
    "eval_bucket_step": None,  # None: max(divisor, E // 4 rounded up to divisor): 128 at 512
    "eval_label_bucket_step": None,  # None: eval_bucket_step
}
AUGMENT_DEFAULTS = {
    "ratio_range": (0.5, 2.0),
    "cat_max_ratio": 0.75,
    "hflip": True,
    "photometric": True,  # mmseg PhotoMetricDistortion
    "brightness_delta": 32.0,
    "contrast_range": (0.5, 1.5),
    "saturation_range": (0.5, 1.5),
    "hue_delta": 18,
}


@dataclasses.dataclass(frozen=True)
class SegFields:
    """The resolved segmentation fields of a config."""

    reduce_zero_label: bool
    image_size: int
    train_scale: tuple[int, int]
    eval_scale: tuple[int, int]
    eval_size_divisor: int
    eval_bucket_step: int
    eval_label_bucket_step: int
    ratio_range: tuple[float, float]
    cat_max_ratio: float
    hflip: bool
    photometric: bool
    brightness_delta: float
    contrast_range: tuple[float, float]
    saturation_range: tuple[float, float]
    hue_delta: int


def _field(section, name, defaults):
    value = section.get(name, None) if section is not None else None
    return defaults[name] if value is None else value


def seg_fields(config, builder: tfds.core.DatasetBuilder | None = None) -> SegFields:
    """``config.data`` / ``config.augment``'s segmentation fields, defaults filled in."""
    d, a = config.data, config.get("augment", None)
    size = int(d.image_size)
    eval_size = int(d.get("eval_image_size", None) or size)
    reduce = _field(d, "reduce_zero_label", DATA_DEFAULTS)
    if reduce is None:
        reduce = bool(getattr(builder, "REDUCE_ZERO_LABEL", False)) if builder is not None else False
    divisor = int(_field(d, "eval_size_divisor", DATA_DEFAULTS))
    step = _field(d, "eval_bucket_step", DATA_DEFAULTS)
    if step is None:
        step = max(divisor, int(math.ceil(eval_size / 4 / divisor)) * divisor)
    label_step = _field(d, "eval_label_bucket_step", DATA_DEFAULTS) or step
    train_scale = _field(d, "train_scale", DATA_DEFAULTS) or (4 * size, size)
    eval_scale = _field(d, "eval_scale", DATA_DEFAULTS) or (4 * eval_size, eval_size)
    g = lambda name: _field(a, name, AUGMENT_DEFAULTS)  # noqa: E731
    fields = SegFields(
        reduce_zero_label=bool(reduce), image_size=size,
        train_scale=tuple(int(v) for v in train_scale), eval_scale=tuple(int(v) for v in eval_scale),
        eval_size_divisor=divisor, eval_bucket_step=int(step), eval_label_bucket_step=int(label_step),
        ratio_range=tuple(float(v) for v in g("ratio_range")), cat_max_ratio=float(g("cat_max_ratio")),
        hflip=bool(g("hflip")), photometric=bool(g("photometric")),
        brightness_delta=float(g("brightness_delta")), contrast_range=tuple(float(v) for v in g("contrast_range")),
        saturation_range=tuple(float(v) for v in g("saturation_range")), hue_delta=int(g("hue_delta")),
    )
    if fields.eval_bucket_step % divisor or fields.eval_bucket_step <= 0:
        raise DataError(f"data.eval_bucket_step={fields.eval_bucket_step} is not a positive multiple of "
                        f"data.eval_size_divisor={divisor}; fix --config.data.eval_bucket_step")
    if not 0 < fields.ratio_range[0] <= fields.ratio_range[1]:
        raise DataError(f"augment.ratio_range={fields.ratio_range} must be 0 < low <= high")
    return fields


# ------------------------------------------------------------------------ builder


@dataclasses.dataclass(frozen=True)
class SegDatasetInfo:
    """What the segmentation trainer needs to know about its dataset."""

    name: str
    num_classes: int  # after reduce_zero_label
    class_names: tuple[str, ...]
    reduce_zero_label: bool
    num_train_examples: int
    num_eval_examples: int
    ignore_index: int = T.IGNORE_INDEX


def _prepare(builder, config) -> None:
    name = config.data.name
    data_dir = resolve_optional(config.data.data_dir)
    if name in _SELF_BUILT:
        try:
            builder.download_and_prepare()
        except Exception:
            if not tfds.builder(name, data_dir=data_dir).is_prepared():  # another process may have won
                raise
        return
    manual_dir = resolve_optional(config.data.get("manual_dir", None))
    if not manual_dir:
        where = data_dir or tfds.core.constants.DATA_DIR
        raise DataError(f"dataset {name!r} is not prepared in data_dir {where!r}; set --config.data.manual_dir to "
                        f"the folder with {ADE_ARCHIVE if name == 'ade20k' else 'its archives'} or "
                        "--config.data.data_dir to where it is prepared")
    if not tf.io.gfile.isdir(manual_dir):
        raise DataError(f"data.manual_dir {manual_dir!r} does not exist; point --config.data.manual_dir at the "
                        f"folder with {ADE_ARCHIVE if name == 'ade20k' else 'the archives'}")
    for archive in getattr(builder, "MANUAL_ARCHIVES", ()):
        if not tf.io.gfile.exists(os.path.join(manual_dir, archive)):
            raise DataError(missing_archive_message(manual_dir) if archive == ADE_ARCHIVE else
                            f"{archive} is not in manual_dir {manual_dir!r}; put it there")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except DataError:
        raise
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, DataError):  # TFDS may wrap our error
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise DataError(str(cause)) from e
        raise DataError(f"preparing {name} from manual_dir {manual_dir!r} failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}; check the archive") from e


def get_builder(config) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of ``config.data.name`` (a segmentation dataset)."""
    name = config.data.name
    data_dir = resolve_optional(config.data.data_dir)
    if data_dir and not is_url(data_dir) and not os.path.isdir(data_dir):
        if name not in _SELF_BUILT and not resolve_optional(config.data.get("manual_dir", None)):
            raise DataError(f"data.data_dir {data_dir!r} does not exist; set --config.data.data_dir to the TFDS "
                            "data folder, or also set --config.data.manual_dir to prepare it there")
        os.makedirs(os.path.realpath(data_dir), exist_ok=True)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown TFDS dataset {name!r}; set --config.data.name to 'ade20k' or "
                        "'dmformer_seg_shapes'") from None
    if not builder.is_prepared():
        _prepare(builder, config)
        builder = tfds.builder(name, data_dir=data_dir)
    if "segmentation_mask" not in builder.info.features or "image" not in builder.info.features:
        raise DataError(f"dataset {name!r} has no 'image'/'segmentation_mask' features; use 'ade20k' or "
                        "'dmformer_seg_shapes'")
    for field in ("train_split", "eval_split"):
        split = config.data[field]
        try:
            builder.info.splits[split]
        except (KeyError, ValueError, AssertionError) as e:
            raise DataError(f"data.{field} {split!r} is not a split of {name} (available: "
                            f"{', '.join(builder.info.splits.keys())}); fix --config.data.{field}") from e
    return builder


def dataset_info(config) -> SegDatasetInfo:
    """Sizes and classes of ``config.data``'s segmentation dataset (prepared if needed)."""
    builder = get_builder(config)
    fields = seg_fields(config, builder)
    names = tuple(getattr(builder, "CLASS_NAMES", ()))
    num_classes = int(getattr(builder, "NUM_CLASSES", len(names)))
    if fields.reduce_zero_label and not getattr(builder, "REDUCE_ZERO_LABEL", False):
        num_classes -= 1  # a dataset with a real class 0 loses it
        names = names[1:]
    splits = builder.info.splits
    return SegDatasetInfo(
        name=config.data.name, num_classes=num_classes, class_names=names,
        reduce_zero_label=fields.reduce_zero_label,
        num_train_examples=int(splits[config.data.train_split].num_examples),
        num_eval_examples=int(splits[config.data.eval_split].num_examples),
    )


# ----------------------------------------------------------------------- training


def _decode(serialized, features):
    example = features.deserialize_example(
        serialized, decoders={"image": tfds.decode.SkipDecoding(), "segmentation_mask": tfds.decode.SkipDecoding()}
    )
    image = tf.cast(aug.decode_image(example["image"]), tf.float32)
    mask = tf.io.decode_png(example["segmentation_mask"], channels=1)
    return image, tf.cast(mask[..., 0], tf.int32)


def _mean_pixel(config) -> list[float]:
    return [float(round(255.0 * m)) for m in config.data.mean]


def _finish(image, label, height, width, config, uint8: bool):
    """Normalise (float32) and pad to (height, width): image 0 after normalisation, or,
    for uint8 transfer, the mean pixel (normalised on the device to ~0), label 255."""
    if uint8:
        image, label = T.pad_to(image, label, height, width, _mean_pixel(config))
        return tf.cast(image, tf.uint8), label
    mean, std = config.data.mean, config.data.std
    if not (isinstance(height, int) and isinstance(width, int)):  # eval buckets: sizes are tensors
        return T.pad_to(aug.normalize(image, mean, std), label, height, width, 0.0)
    # A static target: normalise at the padded size, where the mean and std are
    # image-shaped constants (~0.9 ms for 512x512 with the copies, one thread, against
    # ~2 ms per plane for an image of unknown size, `aug.normalize`), then back to the real
    # area and zero padding: the same values as normalising first.
    shape = tf.shape(image)
    padded, label = T.pad_to(image, label, height, width, 0.0)
    padded.set_shape([height, width, 3])
    normalised = aug.normalize(padded, mean, std)[: shape[0], : shape[1]]
    return tf.pad(normalised, [[0, height - shape[0]], [0, width - shape[1]], [0, 0]]), label


def train_example(image, label, seed, fields: SegFields, config, uint8: bool):
    """One training example: decoded image float32 [H, W, 3] and label int32 [H, W] (as
    stored) -> (image [S, S, 3], label int32 [S, S]) by the mmseg recipe."""
    s = aug.split_seed(seed, 4)
    if fields.reduce_zero_label:
        label = T.reduce_zero_label(label)
    image, label = T.random_rescale(image, label, s[0], fields.train_scale, fields.ratio_range)
    window = T.crop_window(label, s[1], fields.image_size, fields.cat_max_ratio)
    image, label = T.crop(image, label, window)
    if fields.hflip:
        image, label = T.random_flip(image, label, s[2])
    if fields.photometric:
        image = T.photometric_distortion(image, s[3], fields.brightness_delta, fields.contrast_range,
                                         fields.saturation_range, fields.hue_delta)
    size = fields.image_size
    image, label = _finish(image, label, size, size, config, uint8)
    image.set_shape([size, size, 3])
    label.set_shape([size, size])
    return image, label


def train_shard_dataset(builder, config, *, shard: int, num_shards: int, shard_batch: int,
                        start_step: int) -> tf.data.Dataset:
    """Infinite batches of shard ``shard`` from batch ``start_step``: dict(image, label, pos)."""
    d = config.data
    fields = seg_fields(config, builder)
    split = tfds.even_splits(d.train_split, num_shards)[shard]
    per_epoch = builder.info.splits[split].num_examples
    roots = aug.split_seed(tf.constant([int(config.seed), shard], tf.int64), 3)
    order_seed, example_seed = roots[0], roots[1]
    start = int(start_step) * shard_batch
    first_epoch, offset = divmod(start, per_epoch)
    graph_fn = cls_pipeline._graph_fn
    ds = tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(
        graph_fn(lambda e: cls_pipeline._shard_records(builder, split, order_seed, e, int(d.shuffle_buffer)))
    )
    ds = ds.skip(offset).enumerate(start=start)  # raw records only: a resume never decodes
    features = builder.info.features
    uint8 = transfer_dtype(config) == "uint8"

    def decode(pos, serialized):
        image, label = _decode(serialized, features)
        return pos, image, label

    def augment(pos, image, label):
        image, label = train_example(image, label, aug.fold_seed(example_seed, pos), fields, config, uint8)
        return {"image": image, "label": label, "pos": pos}

    ds = ds.map(graph_fn(decode), num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors(log_warning=True)
    ds = ds.map(graph_fn(augment), num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(shard_batch, drop_remainder=True)


def make_train_iterator(config, *, start_step: int, process_index: int,
                        process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """Infinite per-process training batches, the first one for step ``start_step``.

    Yields dict(image float32 [b, S, S, 3] normalised with data.mean/std (uint8 pixels
    when `transfer_dtype` is uint8; padding is then the mean pixel), label int32
    [b, S, S] in 0..num_classes-1 or 255), b = batch_size // process_count,
    S = data.image_size. The global batch at a step depends on data.num_shards, not
    on the process count.
    """
    cls_pipeline.check_process(process_index, process_count)
    if start_step < 0:
        raise DataError(f"start_step={start_step} is negative")
    shards = cls_pipeline.num_shards(config, process_count)
    builder = get_builder(config)
    local = cls_pipeline.local_shards(builder, config, shards, process_index, process_count)
    shard_batch = config.batch_size // shards
    datasets = tuple(
        train_shard_dataset(builder, config, shard=j, num_shards=shards, shard_batch=shard_batch,
                            start_step=int(start_step))
        for j in local
    )

    return cls_pipeline.zip_shard_batches(datasets, config, start_step=int(start_step), shard_batch=shard_batch)


# --------------------------------------------------------------------- evaluation


def _round_up(x: int, step: int) -> int:
    return int(math.ceil(x / step)) * step


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """Global evaluation batches: ``batches[t]`` lists the example indices of global
    batch t (-1 = padding), ``shapes[t]`` its ((image H, W), (label H, W)) padded shape."""

    batches: tuple[tuple[int, ...], ...]
    shapes: tuple[tuple[tuple[int, int], tuple[int, int]], ...]
    sizes: tuple[tuple[int, int], ...]  # original (H, W) of every example


def plan_eval(sizes, fields: SegFields, global_batch: int) -> EvalPlan:
    """Groups examples of original sizes ``sizes`` [(H, W)] by image bucket (the
    AlignResized shape rounded up to multiples of eval_bucket_step), in sorted bucket
    order and index order within a bucket, and cuts each group into global batches of
    ``global_batch`` (the last one padded with -1). A group's labels are padded to the
    largest original (H, W) in it, rounded up to eval_label_bucket_step: one batch
    shape per image bucket, so an evaluation compiles at most as many programs as
    there are image buckets (ADE20K at 512 with step 128: at most 25 while no image is
    more than 4:1 (short side 512, long side 512..2048), at most 31 in all)."""
    groups: dict = {}
    s, ls = fields.eval_bucket_step, fields.eval_label_bucket_step
    for i, (h, w) in enumerate(sizes):
        rh, rw = T.align_resize_size_py(h, w, fields.eval_scale, fields.eval_size_divisor)
        groups.setdefault((_round_up(rh, s), _round_up(rw, s)), []).append(i)
    batches, shapes = [], []
    for key in sorted(groups):
        members = groups[key]
        label_hw = (_round_up(max(sizes[i][0] for i in members), ls), _round_up(max(sizes[i][1] for i in members), ls))
        for start in range(0, len(members), global_batch):
            chunk = members[start:start + global_batch]
            batches.append(tuple(chunk) + (-1,) * (global_batch - len(chunk)))
            shapes.append((key, label_hw))
    return EvalPlan(tuple(batches), tuple(shapes), tuple((int(h), int(w)) for h, w in sizes))


def _split_records(builder, split: str, config):
    """(image bytes, mask bytes, (H, W)) of every example of ``split``, in order."""
    features = builder.info.features

    def parse(serialized):
        example = features.deserialize_example(
            serialized, decoders={"image": tfds.decode.SkipDecoding(), "segmentation_mask": tfds.decode.SkipDecoding()}
        )
        encoded = example["image"]
        shape = tf.cond(tf.io.is_jpeg(encoded), lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                        lambda: tf.shape(tf.io.decode_image(encoded, expand_animations=False))[:2])
        return encoded, example["segmentation_mask"], shape

    instructions = builder.info.splits[split].file_instructions
    records = [tf.data.TFRecordDataset(str(fi.filename)).skip(fi.skip).take(fi.take) for fi in instructions]
    if not records:
        return []
    ds = records[0]
    for r in records[1:]:
        ds = ds.concatenate(r)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True).with_options(cls_pipeline._options(config))
    return [(img, mask, (int(s[0]), int(s[1]))) for img, mask, s in ds.as_numpy_iterator()]


def _eval_setup(config, process_count: int):
    global_batch = config.get("eval_batch_size", None) or config.batch_size
    if global_batch % process_count:
        raise DataError(f"eval batch size {global_batch} does not divide by the {process_count} processes; set "
                        f"--config.eval_batch_size to a multiple of {process_count}")
    builder = get_builder(config)
    fields = seg_fields(config, builder)
    records = _split_records(builder, config.data.eval_split, config)
    plan = plan_eval([r[2] for r in records], fields, global_batch)
    return builder, fields, records, plan, global_batch // process_count


def eval_shapes(config) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The distinct (image (H, W), label (H, W)) batch shapes of the eval split: how many
    programs an evaluation compiles (reads the split's image headers)."""
    _, _, _, plan, _ = _eval_setup(config, 1)
    return sorted(set(plan.shapes))


def align_resize(image, fields: SegFields) -> tuple[tf.Tensor, tf.Tensor]:
    """The evaluation resize (PVT's AlignResize) of a decoded image float32 [H, W, 3] in
    0..255: rescale to ``fields.eval_scale`` (`transforms.rescale_size`), then resize
    again to both sides rounded up to multiples of ``fields.eval_size_divisor``.

    Returns (image float32 [h', w', 3], integral 0..255, not normalised; int32 [2] (h', w')).
    """
    shape = tf.shape(image)
    size = T.rescale_size(shape[0], shape[1], fields.eval_scale)
    image = T.resize_image(image, size)
    div = fields.eval_size_divisor
    aligned = (size + div - 1) // div * div
    return T.resize_image(image, aligned), aligned


def eval_input(image, fields: SegFields, mean, std) -> np.ndarray:
    """One image as the evaluation feeds it to the model, without padding: uint8
    [H, W, 3] -> `align_resize` -> normalised with ``mean``/``std``: float32 [h', w', 3]
    (`dmformer_jax.api.segment` runs on this)."""
    image, _ = align_resize(tf.cast(tf.convert_to_tensor(image), tf.float32), fields)
    return aug.normalize(image, mean, std).numpy()


def eval_example(image, label, fields: SegFields, config, uint8: bool, padded_image_hw, padded_label_hw):
    """Decoded image float32 [H, W, 3] and label int32 [H, W] -> (image resized by
    AlignResize and padded to ``padded_image_hw``, label at the original size padded to
    ``padded_label_hw`` with 255, resized (h, w))."""
    if fields.reduce_zero_label:
        label = T.reduce_zero_label(label)
    shape = tf.shape(label)
    image, aligned = align_resize(image, fields)
    image, _ = _finish(image, tf.zeros(aligned, tf.int32), padded_image_hw[0], padded_image_hw[1], config, uint8)
    label = tf.pad(label, [[0, padded_label_hw[0] - shape[0]], [0, padded_label_hw[1] - shape[1]]],
                   constant_values=T.IGNORE_INDEX)
    return image, label, aligned


def eval_examples(config, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``count`` examples of the eval split, decoded as the evaluation decodes
    them: ``[(image uint8 [H, W, 3], label int32 [H, W])]`` at the original size, with
    ``reduce_zero_label`` applied when configured (255 = ignore). For looking at
    predictions (``python -m dmformer_jax.plot``)."""
    builder = get_builder(config)
    fields = seg_fields(config, builder)
    skip = {"image": tfds.decode.SkipDecoding(), "segmentation_mask": tfds.decode.SkipDecoding()}
    # One file at a time: the split's own order (as `make_eval_iterator`'s `index`).
    read = tfds.ReadConfig(interleave_cycle_length=1)
    ds = builder.as_dataset(split=config.data.eval_split, shuffle_files=False, decoders=skip,
                            read_config=read).take(int(count))
    out = []
    for ex in ds:
        image = aug.decode_image(ex["image"])
        label = tf.cast(tf.io.decode_png(ex["segmentation_mask"], channels=1)[..., 0], tf.int32)
        if fields.reduce_zero_label:
            label = T.reduce_zero_label(label)
        out.append((image.numpy(), label.numpy().astype(np.int32)))
    return out


def make_eval_iterator(config, *, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the eval split, this process's part, in bucketed padded batches.

    Yields dict(
      image float32 [b, Hb, Wb, 3] (uint8 pixels when `transfer_dtype` is uint8): the
        AlignResized image at the top-left, padded (0 after normalisation / mean pixel);
      image_hw int32 [b, 2]: the resized image's (h, w) inside the padding;
      label int32 [b, Hl, Wl]: the label at the image's ORIGINAL size, top-left,
        padded with 255 (reduce_zero_label applied when configured);
      label_hw int32 [b, 2]: the original (H, W);
      mask bool [b]: a real example (False: padding, all-255 label);
      index int32 [b]: the example's position in the split (-1: padding)),
    with b = eval_batch_size // process_count (None: batch_size). Every example
    appears in exactly one process; all processes yield the same number of batches and
    the same shapes at each step (see `plan_eval`, `eval_shapes`).
    The metric: resize logits[:h, :w] bilinearly to (H, W), argmax, and count against
    label[:H, :W] (`dmformer_jax.metrics.segmentation`; padding pixels are 255 anyway).
    """
    cls_pipeline.check_process(process_index, process_count)
    builder, fields, records, plan, b = _eval_setup(config, process_count)
    uint8 = transfer_dtype(config) == "uint8"
    features_dtype = tf.uint8 if uint8 else tf.float32

    def one(encoded, mask_png, ih, iw, lh, lw):
        image = tf.cast(aug.decode_image(encoded), tf.float32)
        label = tf.cast(tf.io.decode_png(mask_png, channels=1)[..., 0], tf.int32)
        image, label, hw = eval_example(image, label, fields, config, uint8, (ih, iw), (lh, lw))
        return image, label, hw

    def gen():
        for t, indices in enumerate(plan.batches):
            (ih, iw), (lh, lw) = plan.shapes[t]
            for i in indices[process_index * b:(process_index + 1) * b]:
                if i < 0:
                    yield {"image": b"", "mask_png": b"", "index": -1, "shape": [ih, iw, lh, lw]}
                else:
                    yield {"image": records[i][0], "mask_png": records[i][1], "index": i, "shape": [ih, iw, lh, lw]}

    sig = {"image": tf.TensorSpec([], tf.string), "mask_png": tf.TensorSpec([], tf.string),
           "index": tf.TensorSpec([], tf.int32), "shape": tf.TensorSpec([4], tf.int32)}

    def prepare(ex):
        ih, iw, lh, lw = ex["shape"][0], ex["shape"][1], ex["shape"][2], ex["shape"][3]

        def real():
            return one(ex["image"], ex["mask_png"], ih, iw, lh, lw)

        def pad():
            image = tf.zeros([ih, iw, 3], features_dtype)
            return image, tf.fill([lh, lw], T.IGNORE_INDEX), tf.zeros([2], tf.int32)

        image, label, hw = tf.cond(ex["index"] >= 0, real, pad)
        return {"image": image, "label": label, "image_hw": hw, "index": ex["index"]}

    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    ds = ds.map(cls_pipeline._graph_fn(prepare), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(b).with_options(cls_pipeline._options(config)).prefetch(AUTOTUNE)

    def batches():
        for batch in ds.as_numpy_iterator():
            idx = batch["index"]
            batch["mask"] = idx >= 0
            batch["label_hw"] = np.array([plan.sizes[i] if i >= 0 else (0, 0) for i in idx], np.int32)
            batch["image_hw"] = batch["image_hw"].astype(np.int32)
            batch["label"] = batch["label"].astype(np.int32)
            yield batch

    return batches()
