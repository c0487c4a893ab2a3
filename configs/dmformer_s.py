"""DMFormer-S on ImageNet-1K: the paper's recipe (82.8% top-1 reported).

    python train.py --config configs/dmformer_s.py --workdir gs://BUCKET/runs/dmformer_s \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

FOUND: 300 epochs, global batch 1024, lr 1e-3 (x batch/1024), cosine. The rest (AdamW
wd 0.05, 5 warm-up epochs, RandAugment, mixup/cutmix, drop path 0.1, crop_pct 0.9) is
our reconstruction from the PoolFormer/VAN recipe (configs/common.py).
"""

from __future__ import annotations

import ml_collections

from configs.common import get_base_config


def get_config() -> ml_collections.ConfigDict:
    """The DMFormer-S ImageNet-1K recipe."""
    config = get_base_config()
    config.model.name = "dmformer_s"
    return config
