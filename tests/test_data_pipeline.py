"""The trainer's data API on the offline digits dataset: shapes, resume, process-count
independence, eval padding and the one-line errors."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import dmformer_jax.data as data
from configs.common import IMAGENET_MEAN, IMAGENET_STD, get_base_config
from dmformer_jax.errors import DataError
from tiny_configs import digits_config


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    data.dataset_info(_config(path))  # prepare once
    return path


def _config(data_dir, **augment):
    return digits_config(data_dir, **{
        "data.shuffle_buffer": 512, "augment.crop_scale": (0.35, 1.0),
        **{f"augment.{k}": v for k, v in augment.items()},
    })


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys() == {"image", "label"}
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_train_batches_full_recipe_and_resume_across_epochs(digits_dir):
    config = _config(digits_dir)  # the full ImageNet recipe: RandAugment, erasing, mixup/cutmix
    config.data.train_split = "train[:40]"  # 5 steps per epoch: resume crosses epochs
    fresh = _take(data.make_train_iterator(config, start_step=0, process_index=0, process_count=1), 8)
    for batch in fresh:
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (8, 10) and batch["label"].dtype == np.float32
        np.testing.assert_allclose(batch["label"].sum(1), 1.0, atol=1e-5)
        assert batch["label"].min() >= 0.01 - 1e-6  # label smoothing 0.1 over 10 classes, mixed
        assert np.isfinite(batch["image"]).all()
    # epoch 2 is a different permutation and different augmentation
    assert not np.array_equal(fresh[0]["label"], fresh[5]["label"])
    # step 6 is in the second epoch: the resumed run re-creates epoch 2's order and seeds
    resumed = _take(data.make_train_iterator(config, start_step=6, process_index=0, process_count=1), 2)
    _assert_batches_equal(resumed[0], fresh[6])
    _assert_batches_equal(resumed[1], fresh[7])


def test_global_batch_independent_of_process_count(digits_dir):
    config = _config(digits_dir, randaugment=False)  # colour jitter instead: cheaper to trace
    config.data.num_shards = 2
    whole = _take(data.make_train_iterator(config, start_step=1, process_index=0, process_count=1), 2)
    parts = [_take(data.make_train_iterator(config, start_step=1, process_index=p, process_count=2), 2)
             for p in range(2)]
    for step in range(2):
        assert parts[0][step]["image"].shape[0] == 4
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key])


def _normalise(image):
    return (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


def test_digits_recipe_without_augmentation_is_the_stored_images(digits_dir):
    config = _config(digits_dir, hflip=False, randaugment=False, color_jitter=0.0, random_erasing=0.0,
                     mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1, crop_scale=(1.0, 1.0),
                     crop_ratio=(1.0, 1.0))
    batch = next(data.make_train_iterator(config, start_step=0, process_index=0, process_count=1))
    builder = tfds.builder("dmformer_digits", data_dir=digits_dir)
    stored = list(tfds.as_numpy(builder.as_dataset(split="train")))
    for image, soft in zip(batch["image"], batch["label"]):
        label = int(np.argmax(soft))
        expected_soft = np.full(10, 0.01)
        expected_soft[label] = 0.91
        np.testing.assert_allclose(soft, expected_soft, atol=1e-6)
        # a whole-image crop resized 32 -> 32 is the stored image, normalised
        matches = [e for e in stored if int(e["label"]) == label
                   and np.allclose(_normalise(e["image"].astype(np.float64)), image, atol=1e-4)]
        assert matches, "train image is not a normalised stored image"


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_counts_each_example_once(digits_dir, process_count):
    config = _config(digits_dir)
    config.data.eval_split = "validation[:299]"  # 299 divides by neither 2 nor 3 nor 12
    config.eval_batch_size = 12
    runs = [list(data.make_eval_iterator(config, process_index=p, process_count=process_count))
            for p in range(process_count)]
    assert len({len(r) for r in runs}) == 1  # every process yields the same number of batches
    b = 12 // process_count
    real = collections.Counter()
    for run in runs:
        for batch in run:
            assert batch["image"].shape == (b, 32, 32, 3) and batch["label"].dtype == np.int32
            assert batch["mask"].dtype == np.bool_
            assert np.all(batch["image"][~batch["mask"]] == 0)
            for image, label in zip(batch["image"][batch["mask"]], batch["label"][batch["mask"]]):
                real[(int(label), np.round(image, 3).tobytes())] += 1
    assert sum(real.values()) == 299
    assert len(runs[0]) == math.ceil(math.ceil(299 / process_count) / b)
    # the same 299 examples, each once, as the split read directly through TFDS
    builder = tfds.builder("dmformer_digits", data_dir=digits_dir)
    labels = collections.Counter(int(e["label"]) for e in tfds.as_numpy(builder.as_dataset(split="validation[:299]")))
    got = collections.Counter()
    for (label, _), count in real.items():
        got[label] += count
    assert got == labels


def test_eval_image_is_timm_transform_of_stored_image(digits_dir):
    config = _config(digits_dir)
    config.eval_batch_size = 4
    config.data.crop_pct = 0.875  # 32 / 0.875 -> 36, centre crop 32
    batch = next(data.make_eval_iterator(config, process_index=0, process_count=1))
    builder = tfds.builder("dmformer_digits", data_dir=digits_dir)
    first = next(iter(tfds.as_numpy(builder.as_dataset(split="validation", shuffle_files=False))))
    resized = np.asarray(Image.fromarray(first["image"]).resize((36, 36), Image.BICUBIC)).astype(np.float64)
    expected = _normalise(resized[2:34, 2:34])
    assert batch["label"][0] == first["label"]
    assert np.abs(batch["image"][0] - expected).max() <= 1.0 / 255 / min(IMAGENET_STD) + 1e-5


def test_eval_crop_pct_defaults_to_the_variant():
    config = get_base_config()
    config.model.name = "dmformer_l"
    assert data.eval_crop_pct(config) == 0.95
    config.data.crop_pct = 0.8
    assert data.eval_crop_pct(config) == 0.8


def _one_line_data_error(fn, *match):
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for word in match:
        assert word in message, message


def test_bad_input_gives_one_line_data_errors(digits_dir, tmp_path):
    c = _config(digits_dir)
    c.batch_size = 10
    _one_line_data_error(lambda: data.make_train_iterator(c, start_step=0, process_index=0, process_count=3),
                         "batch_size=10", "3 processes")
    c = _config(digits_dir)
    c.data.num_shards = 3
    _one_line_data_error(lambda: data.make_train_iterator(c, start_step=0, process_index=0, process_count=2),
                         "num_shards=3")
    c = _config(digits_dir)
    c.data.num_shards = 3
    _one_line_data_error(lambda: data.make_train_iterator(c, start_step=0, process_index=0, process_count=1),
                         "batch_size=8", "num_shards=3")
    c = _config(digits_dir)
    c.data.train_split = "train[:3]"
    c.data.num_shards = 4
    _one_line_data_error(lambda: data.make_train_iterator(c, start_step=0, process_index=0, process_count=1),
                         "num_shards=4")
    c = _config(digits_dir)
    _one_line_data_error(lambda: data.make_train_iterator(c, start_step=0, process_index=2, process_count=2),
                         "process_index 2")
    c = _config(digits_dir)
    c.eval_batch_size = 10
    _one_line_data_error(lambda: data.make_eval_iterator(c, process_index=0, process_count=3), "eval batch size 10")
    c = _config(digits_dir)
    c.data.eval_split = "test"
    _one_line_data_error(lambda: data.dataset_info(c), "eval_split", "test")
    c = _config(digits_dir)
    c.data.name = "no_such_dataset_xyz"
    _one_line_data_error(lambda: data.dataset_info(c), "no_such_dataset_xyz")
    # imagenet2012: missing data_dir; not prepared and no manual_dir; manual_dir without the tars
    c = get_base_config()
    c.data.data_dir = str(tmp_path / "missing")
    _one_line_data_error(lambda: data.dataset_info(c), "does not exist", "data_dir")
    c.data.data_dir = str(tmp_path)
    _one_line_data_error(lambda: data.dataset_info(c), "not prepared", "manual_dir")
    (tmp_path / "manual").mkdir()
    c.data.manual_dir = str(tmp_path / "manual")
    _one_line_data_error(lambda: data.dataset_info(c), "ILSVRC2012_img_train.tar")
    assert not (tmp_path / "imagenet2012").exists() or not any((tmp_path / "imagenet2012").rglob("*.tfrecord*"))


def test_tf_sees_no_accelerator():
    assert tf.config.get_visible_devices("GPU") == []
