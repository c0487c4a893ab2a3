"""UperNet on DMFormer-L, ADE20K 512x512 (recipe: configs/seg_common.py, INFERRED).

    python train.py --config configs/ade20k_upernet_dmformer_l.py --workdir runs/ade20k_upernet_l \
        --config.init_from=IMAGENET_RUN --config.data.manual_dir=~/manual
"""

from __future__ import annotations

import ml_collections

from configs.seg_common import get_seg_config


def get_config() -> ml_collections.ConfigDict:
    config = get_seg_config("upernet", "dmformer_l")
    return config
