"""The offline `dmformer_digits` TFDS dataset against sklearn's bundled digits."""

import collections
import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

import dmformer_jax.data as data
from configs.common import get_base_config


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir):
    config = get_base_config()
    config.data.name = "dmformer_digits"
    config.data.data_dir = data_dir
    return config


def _hash(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_dataset_info_prepares_on_first_use(digits_dir):
    info = data.dataset_info(_config(digits_dir))
    assert info == data.DatasetInfo("dmformer_digits", 10, 1497, 300)
    assert tfds.builder("dmformer_digits", data_dir=digits_dir).is_prepared()


def test_content_is_sklearn_digits_split_stratified_and_disjoint(digits_dir):
    data.dataset_info(_config(digits_dir))
    builder = tfds.builder("dmformer_digits", data_dir=digits_dir)
    stored = {}
    for split in ("train", "validation"):
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        stored[split] = [(_hash(e["image"]), int(e["label"])) for e in examples]
        for e in examples[:5]:
            assert e["image"].shape == (32, 32, 3) and e["image"].dtype == np.uint8
            np.testing.assert_array_equal(e["image"][..., 0], e["image"][..., 2])  # grey in RGB
    # reference: grey levels 0..16 -> 0..255, 8x8 -> 32x32 bilinear, 3 channels
    digits = load_digits()
    reference = collections.Counter()
    for image, label in zip(digits.images, digits.target):
        grey = np.round(image * 255.0 / 16.0).astype(np.uint8)
        big = np.asarray(Image.fromarray(grey).resize((32, 32), Image.BILINEAR))
        reference[(_hash(np.repeat(big[..., None], 3, -1)), int(label))] += 1
    assert collections.Counter(stored["train"]) + collections.Counter(stored["validation"]) == reference
    assert len(stored["train"]) == 1497 and len(stored["validation"]) == 300
    # stratified: each class's validation share follows its share of the 1,797 images
    val_counts = collections.Counter(lbl for _, lbl in stored["validation"])
    class_counts = np.bincount(digits.target)
    for k in range(10):
        assert abs(val_counts[k] - 300 * class_counts[k] / 1797) <= 1
    train_hashes = {h for h, _ in stored["train"]}
    overlap = [h for h, _ in stored["validation"] if h in train_hashes]
    dup = sum(c - 1 for c in collections.Counter(h for h, _ in reference).values())
    assert len(overlap) <= dup  # only images that sklearn itself holds twice may appear in both


def test_split_is_fixed():
    a = data.digits.digits_arrays()
    b = data.digits.digits_arrays()
    np.testing.assert_array_equal(a["validation"][1], b["validation"][1])
    np.testing.assert_array_equal(a["train"][0][:10], b["train"][0][:10])
