"""The embedded default: a small DMFormer on `dmformer_digits`, offline, on CPU.

    python3 -m pip install -e . && python3 train.py --config configs/digits.py --workdir runs/digits

`dmformer_digits` is built on first use from scikit-learn's bundled 8x8 digits (1,497
train / 300 validation images upsampled to 32x32, 10 classes), so this runs with no
network and no data download, through the same input pipeline, train step, checkpoints
and evaluation as ImageNet. It reaches >= 90% validation top-1 in a few minutes on
2 CPU cores (docs/training.md has the measured figures).

Departures from the ImageNet recipe, and why:
  - dmformer_tiny_test (4 blocks, widths 8-32) at 32x32: minutes on a laptop CPU.
  - base_lr 0.064 per 1024 images, i.e. lr 4e-3 at batch 64. The linear scaling rule
    gives 6.25e-5 at this batch, far too small for a few hundred steps from scratch;
    a tiny model on a tiny dataset tolerates and needs the higher rate.
  - Light augmentation only: crops keep >= 70% of the area (digits fill the frame), no
    flip (a mirrored digit is another glyph or none), no RandAugment, mixup, cutmix or
    erasing; label smoothing 0.1 stays.
  - 400 steps (~17 epochs), 1 warm-up epoch, weight decay 0.05 as in the recipe.
"""

from __future__ import annotations

import ml_collections

from configs.common import get_base_config


def get_config() -> ml_collections.ConfigDict:
    """The offline digits demo (same schema as every recipe)."""
    config = get_base_config()
    config.model.name = "dmformer_tiny_test"

    config.data.name = "dmformer_digits"
    config.data.image_size = 32
    config.data.crop_pct = 1.0  # the stored images are the whole digit: no eval crop
    config.data.shuffle_buffer = 2048

    config.augment.crop_scale = (0.7, 1.0)
    config.augment.hflip = False
    config.augment.randaugment = False
    config.augment.color_jitter = 0.0
    config.augment.random_erasing = 0.0
    config.augment.mixup_alpha = 0.0
    config.augment.cutmix_alpha = 0.0
    config.augment.label_smoothing = 0.1

    config.batch_size = 64
    config.eval_batch_size = 128
    config.num_train_steps = 400
    config.optim.base_lr = 0.064  # lr 4e-3 at batch 64 (see the module docstring)
    config.optim.warmup_epochs = 1.0
    config.optim.min_lr = 1e-5

    config.log_every_steps = 25
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 2
    return config
