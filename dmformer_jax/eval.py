"""Evaluate a training checkpoint: top-1 and top-5 over the whole eval split.

    python -m dmformer_jax.eval --workdir runs/digits            # newest checkpoint
    python -m dmformer_jax.eval --workdir runs/digits --step 200
    python -m dmformer_jax.eval --workdir DIR --config configs/dmformer_s.py \
        --config.data.data_dir=gs://BUCKET/tfds                 # other data location

Without --config the run's own config (stored with the checkpoint) is used.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluates and returns the exit status (2 with one ``error:`` line on bad input)."""
    from dmformer_jax.train.cli import main as cli_main

    return cli_main(sys.argv if argv is None else argv, eval_entry=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
