"""DMFormer-L on ImageNet-1K: the paper's recipe (83.6% top-1 reported).

    python train.py --config configs/dmformer_l.py --workdir gs://BUCKET/runs/dmformer_l \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Same recipe as DMFormer-S (configs/common.py); drop path 0.3, layer scale 1e-6 and eval
crop_pct 0.95 come with the variant (INFERRED, as PoolFormer-M36/M48).
"""

from __future__ import annotations

import ml_collections

from configs.common import get_base_config


def get_config() -> ml_collections.ConfigDict:
    """The DMFormer-L ImageNet-1K recipe."""
    config = get_base_config()
    config.model.name = "dmformer_l"
    return config
