"""The one small-config builder the tests share: the base recipe (configs/common.py)
with the tiny test model and 32 px images, on a named dataset, then overrides."""

from __future__ import annotations

from typing import Any

import ml_collections


def set_fields(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Sets each dotted key of ``overrides`` (``'optim.base_lr'``) in ``config``; returns it."""
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def tiny_config(dataset: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The base config with ``dmformer_tiny_test``, 32 px images and batch 8 on
    ``dataset`` (a TFDS name, or ``'synthetic'`` for tests/train_synthetic.py), then
    ``overrides`` (dotted keys: ``**{"augment.mixup_alpha": 0.0}``)."""
    from configs.common import get_base_config

    config = get_base_config()
    config.model.name = "dmformer_tiny_test"
    config.data.name = dataset
    config.data.image_size = 32
    config.batch_size = 8
    return set_fields(config, overrides)


def digits_config(data_dir: str, **overrides: Any) -> ml_collections.ConfigDict:
    """`tiny_config` on the offline ``dmformer_digits`` dataset, prepared in ``data_dir``."""
    return tiny_config("dmformer_digits", **{"data.data_dir": data_dir, **overrides})
