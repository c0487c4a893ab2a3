"""Train DMFormer.

    python train.py --config configs/digits.py --workdir runs/digits           # offline demo
    python train.py --config configs/dmformer_s.py --workdir DIR \
        --config.data.data_dir=DIR_WITH_TFDS_IMAGENET                         # ImageNet-1K
    python train.py --config configs/digits.py --workdir runs/digits --eval_only

Rerunning on a workdir with checkpoints resumes from the newest. See docs/training.md.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if __name__ == "__main__":
    from dmformer_jax.train.cli import exit_process, main

    exit_process(main(sys.argv))
