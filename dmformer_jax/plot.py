"""Draw a run's loss and accuracy curves from ``WORKDIR/metrics.jsonl`` to a PNG.

    python -m dmformer_jax.plot runs/digits               # -> runs/digits/curves.png
    python -m dmformer_jax.plot runs/digits --out c.png
    python -m dmformer_jax.plot gs://BUCKET/runs/dmformer_s   # any TF file system
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from dmformer_jax.paths import is_url, resolve
from dmformer_jax.train.logger import read_metrics


def plot_run(workdir: str, out: str | None = None) -> str:
    """Writes loss (train/eval) and top-1/top-5 accuracy vs step; returns the PNG path.

    Raises:
      FileNotFoundError: ``workdir`` has no metrics yet.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    workdir = resolve(workdir)
    records = read_metrics(workdir)
    if not records:
        raise FileNotFoundError(f"no metrics in {os.path.join(workdir, 'metrics.jsonl')}; train first")
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        ax_acc.plot([r["step"] for r in train], [100 * r["top1"] for r in train], label="train top-1", alpha=0.7)
    if evals:
        steps = [r["step"] for r in evals]
        ax_loss.plot(steps, [r["loss"] for r in evals], "o-", label="eval loss")
        ax_acc.plot(steps, [100 * r["top1"] for r in evals], "o-", label="eval top-1")
        ax_acc.plot(steps, [100 * r["top5"] for r in evals], "s--", label="eval top-5")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="step", ylabel="%", title="accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(os.path.normpath(workdir)))
    fig.tight_layout()
    out = resolve(out) if out else os.path.join(workdir, "curves.png")
    if is_url(out):  # gs:// etc.: through TensorFlow's file systems
        import io

        import tensorflow as tf

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        with tf.io.gfile.GFile(out, "wb") as f:
            f.write(buffer.getvalue())
    else:
        fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmformer_jax.plot", description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None, help="PNG path (default WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.workdir, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
