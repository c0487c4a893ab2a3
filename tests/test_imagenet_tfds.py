"""TFDS's own imagenet2012 builder prepares a tiny fake ILSVRC manual_dir; our iterators
read it (grey, CMYK and undecodable JPEGs included)."""

import collections
import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import dmformer_jax.data as data
from configs.common import get_base_config
from dmformer_jax.data.augment import decode_image
from ilsvrc_fixture import DEFAULT_SYNSETS, write_tiny_ilsvrc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilsvrc")
    written = write_tiny_ilsvrc(root / "manual", images_per_class=3, val_images=4, size=40, garbled=1)
    # data_dir does not exist yet: with manual_dir set, the first run creates it.
    config = get_base_config()
    config.model.name = "dmformer_tiny_test"
    config.data.data_dir = str(root / "data")
    config.data.manual_dir = str(root / "manual")
    config.data.image_size = 32
    config.data.shuffle_buffer = 64
    config.batch_size = 4
    config.eval_batch_size = 4
    info = data.dataset_info(config)  # TFDS's imagenet2012 builder prepares the manual_dir
    return config, written, info


def test_prepared_sizes(ilsvrc):
    _, written, info = ilsvrc
    assert info == data.DatasetInfo("imagenet2012", 1000, len(written["train_labels"]) + 1, 4)
    assert len(written["train_labels"]) == 12


def test_train_iterator_skips_and_counts_the_garbled_jpeg(ilsvrc):
    config, _, _ = ilsvrc
    config = config.copy_and_resolve_references()
    config.augment.mixup_alpha = 0.0
    config.augment.cutmix_alpha = 0.0
    config.augment.label_smoothing = 0.0
    builder = tfds.builder("imagenet2012", data_dir=config.data.data_dir)
    wnid_index = {w: builder.info.features["label"].str2int(w) for w in DEFAULT_SYNSETS}
    data.DECODE_ERRORS.reset()
    iterator = data.make_train_iterator(config, start_step=0, process_index=0, process_count=1)
    batches = [next(iterator) for _ in range(7)]
    for b in batches:
        assert b["image"].shape == (4, 32, 32, 3) and b["label"].shape == (4, 1000)
        assert np.isfinite(b["image"]).all()
    labels = np.concatenate([b["label"].argmax(1) for b in batches])
    np.testing.assert_array_equal(np.concatenate([b["label"].max(1) for b in batches]), 1.0)
    assert set(labels) <= set(wnid_index.values())
    # epoch 1 = 13 raw records = the 12 good images (3 per synset) once; the garbled one dropped
    assert collections.Counter(labels[:12]) == {i: 3 for i in wnid_index.values()}
    assert collections.Counter(labels[12:24]) == {i: 3 for i in wnid_index.values()}
    # 28 good images reach into epoch 3: epochs 1 and 2 each skipped their garbled record
    assert 2 <= data.decode_error_count() <= 3


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_iterator_exact_count_and_real_labels(ilsvrc, process_count):
    config, written, _ = ilsvrc
    builder = tfds.builder("imagenet2012", data_dir=config.data.data_dir)
    expected = collections.Counter(builder.info.features["label"].str2int(w) for _, w in written["val_labels"])
    runs = [list(data.make_eval_iterator(config, process_index=p, process_count=process_count))
            for p in range(process_count)]
    assert len({len(r) for r in runs}) == 1
    got = collections.Counter()
    for run in runs:
        for b in run:
            assert b["image"].shape == (4 // process_count, 32, 32, 3)
            got.update(int(x) for x in b["label"][b["mask"]])
    assert got == expected  # each of the 4 validation images once, with TFDS's shipped labels


def test_grey_and_cmyk_records_decode_to_three_channels(ilsvrc):
    config, written, _ = ilsvrc
    builder = tfds.builder("imagenet2012", data_dir=config.data.data_dir)
    ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    raw = {e["file_name"].decode(): e["image"] for e in tfds.as_numpy(ds)}
    grey = decode_image(tf.constant(raw[written["grayscale"]])).numpy()
    assert grey.shape == (40, 50, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    assert Image.open(io.BytesIO(raw[written["cmyk"]])).mode == "CMYK"  # TFDS kept it CMYK
    cmyk = decode_image(tf.constant(raw[written["cmyk"]])).numpy()
    assert cmyk.shape == (40, 50, 3) and cmyk.std() > 0
