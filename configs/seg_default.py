"""The embedded segmentation default: Semantic FPN on a tiny DMFormer, offline, on CPU.

    python3 train.py --config configs/seg_default.py --workdir runs/seg

`dmformer_seg_shapes` (7 classes: background + 6 coloured shapes on textured canvases,
3,000 train / 300 validation images of 48..96 px) is generated on first use with no
network, then trained through the same ADE20K pipeline (random rescale, cat_max_ratio
crop, flip, PhotoMetricDistortion), train step, checkpoints and whole-image
original-size evaluation as ADE20K. docs/segmentation.md ("Training") has the measured
figures on this 2-core CPU.

Departures from the ADE20K recipe (configs/seg_common.py), and why:
  - dmformer_tiny_test (widths 8-32) with a narrow FPN (neck 32, head 32) at 64x64 crops:
    minutes on a laptop CPU.
  - AdamW lr 3e-3 with a poly(0.9) decay, no warm-up, weight decay 1e-4 on kernels,
    batch 16: from scratch, a tiny model needs a far higher lr than a fine-tune.
"""

from __future__ import annotations

import ml_collections

from configs.seg_common import get_seg_config


def get_config() -> ml_collections.ConfigDict:
    config = get_seg_config("fpn", "dmformer_tiny_test")
    config.model.neck_channels = 32
    config.model.channels = 32

    config.data.name = "dmformer_seg_shapes"
    config.data.image_size = 64
    config.data.shuffle_buffer = 1024

    config.batch_size = 16
    config.eval_batch_size = 50
    config.num_train_steps = 1500
    config.optim.base_lr = 3e-3
    config.optim.weight_decay = 1e-4
    config.optim.weight_decay_params = "kernels"
    config.optim.poly_power = 0.9
    config.optim.warmup_steps = 0

    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 2
    return config
