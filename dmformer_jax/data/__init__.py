"""Input pipeline: TFDS datasets, augmentations, deterministic per-process iterators.

Importing this package hides accelerators from TensorFlow (JAX owns them) and
registers the offline `dmformer_digits` TFDS dataset.
"""

import tensorflow as tf

try:  # TF must never grab a GPU/TPU: JAX uses them. Fails only if TF already did.
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
except (RuntimeError, ValueError):
    pass

from dmformer_jax.data.builders import (  # noqa: E402
    DatasetInfo,
    dataset_info,
    eval_crop_pct,
    get_builder,
    make_eval_iterator,
    make_train_iterator,
    transfer_dtype,
)
from dmformer_jax.data.digits import DmformerDigits  # noqa: E402
from dmformer_jax.data.pipeline import DECODE_ERRORS, DecodeErrorCounter, decode_error_count  # noqa: E402

__all__ = [
    "DECODE_ERRORS",
    "DatasetInfo",
    "DecodeErrorCounter",
    "DmformerDigits",
    "dataset_info",
    "decode_error_count",
    "eval_crop_pct",
    "get_builder",
    "make_eval_iterator",
    "make_train_iterator",
    "transfer_dtype",
]
