"""Labels stay with their images through the input pipeline (issue 15), fast.

With every augmentation off, each training or eval image the iterators yield is one of
the stored digits; its label must be that digit's label from scikit-learn (found by
nearest neighbour), and training targets must be one-hot on it. A label shifted,
permuted or taken from another example fails here in seconds, without training.
"""

from __future__ import annotations

import numpy as np
import pytest

import dmformer_jax.data as data
from configs.digits import get_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = get_config()
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    a = config.augment
    a.crop_scale, a.crop_ratio = (1.0, 1.0), (1.0, 1.0)  # the whole 32x32 image, unresized
    a.label_smoothing = 0.0
    config.batch_size = 64
    config.eval_batch_size = 128
    data.dataset_info(config)  # prepares the dataset
    return config, data.digits.digits_arrays()


def _pixels(config, images):
    """Normalised images -> 0..255 grey (channel 0)."""
    mean = np.asarray(config.data.mean, np.float32)
    std = np.asarray(config.data.std, np.float32)
    return ((images * std + mean) * 255.0)[..., 0]


def _match(pixels, stored_images, stored_labels):
    flat = stored_images[..., 0].reshape(len(stored_images), -1).astype(np.float32)
    labels = []
    for p in pixels:
        d = np.abs(flat - p.reshape(1, -1)).mean(-1)
        i = int(np.argmin(d))
        assert d[i] < 1.0, d[i]  # the same image (up to resampling rounding)
        labels.append(stored_labels[i])
    return np.asarray(labels)


def test_train_labels_belong_to_their_images(setup):
    config, arrays = setup
    it = data.make_train_iterator(config, start_step=0, process_index=0, process_count=1)
    images, labels = arrays["train"]
    seen = set()
    for _ in range(2):
        batch = next(it)
        target = batch["label"]
        assert target.shape == (64, 10)
        np.testing.assert_array_equal(target, np.eye(10, dtype=np.float32)[target.argmax(-1)])
        want = _match(_pixels(config, batch["image"]), images, labels)
        np.testing.assert_array_equal(target.argmax(-1), want)
        seen |= set(want.tolist())
    assert len(seen) >= 8  # many classes, not one


def test_eval_labels_belong_to_their_images(setup):
    config, arrays = setup
    images, labels = arrays["validation"]
    got, want = [], []
    for batch in data.make_eval_iterator(config, process_index=0, process_count=1):
        mask = batch["mask"]
        got.append(batch["label"][mask])
        want.append(_match(_pixels(config, batch["image"][mask]), images, labels))
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    assert len(np.concatenate(got)) == 300
