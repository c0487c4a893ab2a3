"""The base of every segmentation config: ADE20K, whole-image eval, the mmseg recipes.

FOUND (the paper): DMFormer is evaluated on ADE20K with Semantic FPN and UperNet.
INFERRED (from the PoolFormer, Swin and mmsegmentation configs; issue #13's table): all
the rest, each a field here. `get_seg_config(head, backbone)` gives the recipe of one
head; the `configs/ade20k_*` files only pick a head and a backbone:

    python train.py --config configs/ade20k_fpn_dmformer_s.py --config.init_from=IMAGENET_RUN \\
        --config.data.manual_dir=~/manual --config.data.data_dir=~/tensorflow_datasets

Keys shared with classification keep their meaning: model.name (the backbone
variant), batch_size, num_train_steps, data.data_dir, data.manual_dir, data.image_size
(the training crop side). The fields read by the data pipeline are documented in
docs/segmentation.md.
"""

from __future__ import annotations

import ml_collections

from configs.common import _unset, get_base_config

# Per head: (iterations, global batch, lr, weight decay, the parameters decayed
# (optim.weight_decay_params), poly power, warm-up updates, eval/checkpoint interval).
# INFERRED, see the module doc.
RECIPES = {
    # PoolFormer's sem_fpn config: AdamW 2e-4, wd 1e-4 on every parameter, poly 0.9 to 0,
    # no warm-up, 40k x 32.
    "fpn": dict(steps=40_000, batch=32, lr=2e-4, wd=1e-4, decay="all", power=0.9, warmup=0, every=4_000),
    # Swin's UperNet config: AdamW 6e-5, wd 0.01 with no decay on norms (paramwise_cfg
    # norm decay_mult 0; conv biases and everything else decayed), linear warm-up of
    # 1,500 iterations from ratio 1e-6, poly 1.0 to 0, 160k x 16.
    "upernet": dict(steps=160_000, batch=16, lr=6e-5, wd=0.01, decay="all_but_norms", power=1.0, warmup=1_500,
                    every=16_000),
}


def get_seg_base_config() -> ml_collections.ConfigDict:
    """Every field the segmentation trainer reads, ADE20K at 512 (head not chosen yet)."""
    config = get_base_config()
    config.task = "segmentation"

    # --- model: the DMFormerSegmentation fields (dmformer_jax/models/segmentation.py) --
    config.model.head = _unset(str)  # 'fpn' (Semantic FPN) | 'upernet'
    config.model.channels = _unset(int)  # decode-head width; None: 128 fpn, 512 upernet
    config.model.neck_channels = _unset(int)  # Semantic FPN neck: 256
    config.model.pool_scales = _unset(tuple)  # UperNet PPM: (1, 2, 3, 6)
    config.model.dropout_rate = _unset(float)  # before each classifier: 0.1
    config.model.aux_head = _unset(bool)  # None: True for upernet, False for fpn
    config.model.aux_in_index = _unset(int)  # stage the aux FCN head reads: 2 (stride 16)
    config.model.aux_channels = _unset(int)  # 256
    config.model.aux_loss_weight = _unset(float)  # 0.4 (mmseg)

    # --- data: ADE20K (docs/segmentation.md) ----------------------------------------
    config.data.name = "ade20k"
    config.data.image_size = 512  # the training crop side
    config.data.shuffle_buffer = 1024
    config.data.reduce_zero_label = _unset(bool)  # None: the dataset's (ade20k True)
    config.data.train_scale = _unset(tuple)  # None: (4 S, S) = (2048, 512)
    config.data.eval_scale = _unset(tuple)  # None: (4 E, E) = (2048, 512)
    config.data.eval_size_divisor = 32
    config.data.eval_bucket_step = _unset(int)  # None: max(32, E/4 rounded up to 32)
    config.data.eval_label_bucket_step = _unset(int)  # None: eval_bucket_step

    # --- augmentation: mmseg's ADE20K pipeline (the classification ones are unused) --
    config.augment.ratio_range = (0.5, 2.0)
    config.augment.cat_max_ratio = 0.75
    config.augment.hflip = True
    config.augment.photometric = True
    config.augment.brightness_delta = 32.0
    config.augment.contrast_range = (0.5, 1.5)
    config.augment.saturation_range = (0.5, 1.5)
    config.augment.hue_delta = 18

    # --- optimisation: lr is the lr itself (no batch scaling); poly to 0 -----------------
    config.optim.lr_reference_batch = None
    config.optim.schedule = "poly"
    config.optim.min_lr = 0.0
    config.optim.warmup_epochs = 0.0
    config.eval_batch_size = 8  # whole images at up to 2048 x 512
    config.log_every_steps = 50
    config.keep_checkpoints = 2
    return config


def get_seg_config(head: str, backbone: str) -> ml_collections.ConfigDict:
    """The ADE20K recipe of ``head`` ('fpn' | 'upernet') on the ``backbone`` variant."""
    r = RECIPES[head]
    config = get_seg_base_config()
    config.model.name = backbone
    config.model.head = head
    config.batch_size = r["batch"]
    config.num_train_steps = r["steps"]
    config.optim.base_lr = r["lr"]
    config.optim.weight_decay = r["wd"]
    config.optim.weight_decay_params = r["decay"]
    config.optim.poly_power = r["power"]
    config.optim.warmup_steps = r["warmup"]
    config.optim.warmup_ratio = 1e-6
    config.optim.b1, config.optim.b2 = 0.9, 0.999
    config.eval_every_steps = r["every"]
    config.checkpoint_every_steps = r["every"]
    return config
