"""Draw a run's curves from ``WORKDIR/metrics.jsonl`` to a PNG; for a segmentation run
also its predictions on a few validation images.

    python -m dmformer_jax.plot runs/digits               # -> runs/digits/curves.png
    python -m dmformer_jax.plot runs/digits --out c.png
    python -m dmformer_jax.plot gs://BUCKET/runs/dmformer_s   # any TF file system
    python -m dmformer_jax.plot runs/seg --num_images 6   # segmentation: 6 image rows

Classification: loss (train/eval) and top-1/top-5 accuracy vs step.
Segmentation (records with ``mIoU`` or ``pixel_acc``): train loss and validation
mIoU/aAcc vs step on top; below, one row per validation image (the first
``--num_images`` of the run's eval split): the image, the ground truth over it and the
newest checkpoint's prediction over it (`dmformer_jax.segment`), in the fixed colours
of `palette` (half image, half class colour; ignored pixels show the image).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from dmformer_jax.errors import CheckpointError, DataError
from dmformer_jax.paths import is_url, resolve
from dmformer_jax.train.logger import read_metrics

DEFAULT_NUM_IMAGES = 4
IGNORE_INDEX = 255
PANELS = ("image", "ground truth", "prediction")
GAP = 6  # pixels between image panels
HEADER = 18  # pixels above the panels for their titles


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    return plt


def plot_run(workdir: str, out: str | None = None, num_images: int = DEFAULT_NUM_IMAGES) -> str:
    """Writes the run's figure (see the module doc) to ``out`` (default
    ``WORKDIR/curves.png``); returns the PNG path.

    Raises:
      FileNotFoundError: ``workdir`` has no metrics yet.
    """
    workdir = resolve(workdir)
    records = read_metrics(workdir)
    if not records:
        raise FileNotFoundError(f"no metrics in {os.path.join(workdir, 'metrics.jsonl')}; train first")
    out = resolve(out) if out else os.path.join(workdir, "curves.png")
    if is_segmentation(records):
        return _plot_segmentation(workdir, out, records, num_images)
    plt = _pyplot()
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
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return _write(out, buffer.getvalue())


def _write(out: str, png: bytes) -> str:
    if is_url(out):  # gs:// etc.: through TensorFlow's file systems
        import tensorflow as tf

        with tf.io.gfile.GFile(out, "wb") as f:
            f.write(png)
    else:
        with open(out, "wb") as f:
            f.write(png)
    return out


# ----------------------------------------------------------------------- segmentation


def is_segmentation(records: Sequence[dict]) -> bool:
    """Whether ``metrics.jsonl``'s records are a segmentation run's (``mIoU``/``pixel_acc``)."""
    return any("mIoU" in r or "pixel_acc" in r for r in records)


def seg_curves(records: Sequence[dict]) -> dict[str, list[float]]:
    """What the segmentation curves draw, from ``metrics.jsonl``'s records in order:
    ``train_step``/``loss`` (train records) and ``eval_step``/``mIoU``/``aAcc``
    (eval records; fractions in 0..1, drawn as %)."""
    train = [r for r in records if r["split"] == "train" and "loss" in r]
    evals = [r for r in records if r["split"] == "eval" and "mIoU" in r]
    return {
        "train_step": [r["step"] for r in train], "loss": [r["loss"] for r in train],
        "eval_step": [r["step"] for r in evals], "mIoU": [r["mIoU"] for r in evals],
        "aAcc": [r["aAcc"] for r in evals],
    }


def palette(num_classes: int) -> np.ndarray:
    """Fixed class colours, uint8 ``(num_classes, 3)``: matplotlib's ``tab10`` for the
    first ten classes, then colours from a fixed seed (the same in every plot)."""
    import matplotlib

    tab10 = np.round(255 * np.asarray(matplotlib.colormaps["tab10"].colors)).astype(np.uint8)
    rest = np.random.default_rng(0).integers(30, 226, (max(num_classes - 10, 0), 3)).astype(np.uint8)
    return np.concatenate([tab10, rest])[:num_classes]


def overlay(image: np.ndarray, classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """``image`` uint8 ``(H, W, 3)`` half-blended with ``colours[classes]``
    (``(image + colour) // 2``); pixels of class `IGNORE_INDEX` (or any index without a
    colour) keep the image."""
    classes = np.asarray(classes)
    known = (classes >= 0) & (classes < len(colours))
    colour = colours[np.where(known, classes, 0)].astype(np.uint16)
    blend = ((image.astype(np.uint16) + colour) // 2).astype(np.uint8)
    return np.where(known[..., None], blend, image)


def seg_examples(workdir: str, num_images: int = DEFAULT_NUM_IMAGES) -> list[dict[str, np.ndarray]]:
    """The first ``num_images`` examples of the run's eval split with the newest
    checkpoint's predictions: ``[{'image': uint8 (H, W, 3), 'label': int32 (H, W)
    (255 = ignore), 'pred': int32 (H, W)}]`` (`dmformer_jax.segment`, EMA when kept).

    Raises:
      CheckpointError: no readable checkpoint. DataError: the eval data is not there.
    """
    import ml_collections

    from dmformer_jax import api
    from dmformer_jax.data.segmentation import pipeline as seg_pipeline  # late: TensorFlow

    meta = api.read_metadata(workdir)
    if meta.get("config") is None:
        raise CheckpointError(f"the checkpoint in {workdir} records no config: cannot find its eval data")
    examples = seg_pipeline.eval_examples(ml_collections.ConfigDict(meta["config"]), num_images)
    import jax

    # One device: a handful of images, and no program compiled for every local device.
    model, variables = api.load(workdir, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    preds = api.segment(model, variables, [image for image, _ in examples], meta)
    return [{"image": image, "label": label, "pred": pred} for (image, label), pred in zip(examples, preds)]


def _zoom(x: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(x, k, axis=0), k, axis=1)


def seg_panels(examples: Sequence[dict[str, np.ndarray]], num_classes: int) -> tuple[np.ndarray, dict[str, tuple]]:
    """The image grid: one row per example (image | ground truth | prediction), each
    panel enlarged by a whole factor (nearest neighbour) so that small images stay
    visible, with the titles above.

    Returns:
      the grid, uint8 ``(H, W, 3)`` on white, and ``boxes``: ``'<panel> <row>'`` (e.g.
      ``'prediction 0'``) -> ``(top, left, zoom)``: the panel's pixel ``(i, j)`` is
      the example's ``(i // zoom, j // zoom)``.
    """
    from PIL import Image, ImageDraw

    colours = palette(num_classes)
    cell_h = max(e["image"].shape[0] for e in examples)
    cell_w = max(e["image"].shape[1] for e in examples)
    zoom = max(1, 192 // max(cell_h, cell_w))
    cell_h, cell_w = zoom * cell_h, zoom * cell_w
    grid = np.full((HEADER + len(examples) * (cell_h + GAP), len(PANELS) * (cell_w + GAP), 3), 255, np.uint8)
    boxes = {}
    for row, e in enumerate(examples):
        shown = (e["image"], overlay(e["image"], e["label"], colours), overlay(e["image"], e["pred"], colours))
        for col, (name, panel) in enumerate(zip(PANELS, shown)):
            top, left = HEADER + row * (cell_h + GAP), col * (cell_w + GAP)
            panel = _zoom(panel, zoom)
            grid[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
            boxes[f"{name} {row}"] = (top, left, zoom)
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for col, name in enumerate(PANELS):
        draw.text((col * (cell_w + GAP) + 2, 3), name, fill=(0, 0, 0))
    return np.asarray(canvas), boxes


def _curves_image(records: Sequence[dict], width: int, title: str) -> np.ndarray:
    """The curves (`seg_curves`) as an RGB image ``width`` pixels wide."""
    plt = _pyplot()
    c = seg_curves(records)
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(width / 100, 3.2), dpi=100)
    ax_loss.plot(c["train_step"], c["loss"], label="train loss")
    ax_eval.plot(c["eval_step"], [100 * v for v in c["mIoU"]], "o-", label="val mIoU")
    ax_eval.plot(c["eval_step"], [100 * v for v in c["aAcc"]], "s--", label="val aAcc")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_eval.set(xlabel="step", ylabel="%", title="validation", ylim=(0, 100))
    for ax in (ax_loss, ax_eval):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def seg_figure(records: Sequence[dict], examples: Sequence[dict[str, np.ndarray]], num_classes: int,
               title: str = "") -> tuple[np.ndarray, dict[str, tuple]]:
    """The segmentation figure, uint8 ``(H, W, 3)``: the curves on top, the image grid
    (`seg_panels`) below; ``boxes`` as `seg_panels`', offset to the figure."""
    grid, boxes = seg_panels(examples, num_classes) if examples else (np.zeros((0, 0, 3), np.uint8), {})
    curves = _curves_image(records, max(grid.shape[1], 700), title)
    width = max(curves.shape[1], grid.shape[1])
    figure = np.full((curves.shape[0] + grid.shape[0], width, 3), 255, np.uint8)
    figure[:curves.shape[0], :curves.shape[1]] = curves
    figure[curves.shape[0]:, :grid.shape[1]] = grid
    return figure, {k: (top + curves.shape[0], left, zoom) for k, (top, left, zoom) in boxes.items()}


def _plot_segmentation(workdir: str, out: str, records: Sequence[dict], num_images: int) -> str:
    import io

    from PIL import Image

    from dmformer_jax import api

    examples: list[dict[str, Any]] = []
    num_classes = 0
    if num_images > 0:
        try:
            examples = seg_examples(workdir, num_images)
            num_classes = int(api.read_metadata(workdir)["num_classes"])
        except (CheckpointError, DataError) as e:
            print(f"warning: no prediction panels ({e}); drawing the curves only", file=sys.stderr)
    figure, _ = seg_figure(records, examples, num_classes, os.path.basename(os.path.normpath(workdir)))
    buffer = io.BytesIO()
    Image.fromarray(figure).save(buffer, format="PNG")
    return _write(out, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmformer_jax.plot", description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None, help="PNG path (default WORKDIR/curves.png)")
    parser.add_argument("--num_images", type=int, default=DEFAULT_NUM_IMAGES,
                        help="segmentation runs: validation images to draw predictions for (0: curves only)")
    args = parser.parse_args(argv)
    if args.num_images < 0:
        print(f"error: --num_images={args.num_images} is negative; pass 0 or more", file=sys.stderr)
        return 2
    try:
        path = plot_run(args.workdir, args.out, args.num_images)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
