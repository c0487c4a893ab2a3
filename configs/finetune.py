"""Fine-tuning from a pretrained checkpoint or exported file (``config.init_from``).

    python train.py --config configs/finetune.py --workdir runs/ft \
        --config.init_from=runs/digits --config.data.image_size=64

``init_from`` takes anything `dmformer_jax.load` reads: a training workdir, a
``checkpoints/<step>`` folder, an exported Orbax folder or ``.safetensors`` file. The
weights are merged by path (`dmformer_jax.models.pretrained.merge_pretrained`) into a fresh
model and the report (loaded / reset / missing / unexpected / reshaped) is logged. A
head of another size needs ``--config.reset_head=True``; nothing else may differ, so
``config.model`` must be the pretrained architecture. Any resolution divisible by 32
works: DMFormer has no position embeddings. A resumed fine-tuning run restores its own
checkpoint and ignores ``init_from``.

Defaults: the offline digits task with dmformer_tiny_test (pairs with
configs/digits.py). For ImageNet at 288 from a dmformer_s checkpoint:

    python train.py --config configs/finetune.py --workdir runs/s288 \
        --config.init_from=runs/dmformer_s --config.model.name=dmformer_s \
        --config.data.name=imagenet2012 --config.data.image_size=288 \
        --config.batch_size=1024 --config.num_train_steps=12500 \
        --config.optim.base_lr=5e-5 --config.augment.randaugment=True

Recipe (INFERRED, the usual fine-tuning defaults): a learning rate ~20x below
pre-training, a short warm-up, few steps, the pre-training augmentation kept light.
"""

from __future__ import annotations

import ml_collections

from configs.digits import get_config as digits_config


def get_config() -> ml_collections.ConfigDict:
    """Fine-tuning defaults (same schema as every recipe; set init_from)."""
    config = digits_config()
    config.init_from = None  # required: where the pretrained weights are
    config.reset_head = False  # True: train a new head (another num_classes)
    config.num_train_steps = 100
    config.optim.base_lr = 0.016  # lr 1e-3 at batch 64: 4x below the digits pre-training
    config.optim.warmup_epochs = 0.1
    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 100
    return config
