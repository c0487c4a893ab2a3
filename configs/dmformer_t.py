"""DMFormer-T (our small/fast variant, no paper number) on ImageNet-1K.

    python train.py --config configs/dmformer_t.py --workdir runs/dmformer_t \
        --config.data.data_dir=$HOME/tensorflow_datasets

Same recipe as DMFormer-S (configs/common.py); drop path 0.05 from the variant.
"""

from __future__ import annotations

import ml_collections

from configs.common import get_base_config


def get_config() -> ml_collections.ConfigDict:
    """The DMFormer-T ImageNet-1K recipe."""
    config = get_base_config()
    config.model.name = "dmformer_t"
    return config
