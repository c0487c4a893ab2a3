"""The ``ADEChallengeData2016.zip`` writer the segmentation tests and
benchmarks/bench_seg_input.py use: one copy of the archive layout the real `ade20k`
builder (dmformer_jax/data/segmentation/ade20k.py) reads, checked by tests/test_seg_data.py.

    ADEChallengeData2016/images/{training,validation}/STEM.jpg
    ADEChallengeData2016/annotations/{training,validation}/STEM.png
"""

from __future__ import annotations

import io
import os
import pathlib
import zipfile
from typing import Iterable

import numpy as np

ARCHIVE = "ADEChallengeData2016.zip"
ROOT = "ADEChallengeData2016"

# ADE20K's usual (height, width), weighted by repetition. INFERRED from the data set's
# well-known make-up (most images are scaled to a 512-pixel short side, 4:3 landscape
# or portrait; a minority square, wider or larger): mean ~390k pixels.
ADE20K_SIZES = (
    [(512, 683)] * 9 + [(683, 512)] * 4 + [(512, 512)] * 2 + [(512, 768)] * 2
    + [(384, 512), (768, 1024), (1024, 1365)]
)


def jpeg_bytes(array: np.ndarray, quality: int = 95) -> bytes:
    """uint8 [H, W, 3] or [H, W] -> JPEG bytes (PIL, 4:2:0)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 [H, W] -> 8-bit grey PNG bytes (PIL's default compression)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def write_ade_zip(folder: str | os.PathLike,
                  members: Iterable[tuple[str, str, bytes, bytes | None]]) -> pathlib.Path:
    """Writes ``folder/ADEChallengeData2016.zip`` from ``members``: (split folder
    'training' | 'validation', stem, JPEG bytes, PNG bytes or None for no annotation).
    Returns the zip's path. The annotations/ folder is absent when no member has one."""
    path = pathlib.Path(folder) / ARCHIVE
    with zipfile.ZipFile(path, "w") as z:
        for split, stem, jpeg, png in members:
            z.writestr(f"{ROOT}/images/{split}/{stem}.jpg", jpeg)
            if png is not None:
                z.writestr(f"{ROOT}/annotations/{split}/{stem}.png", png)
    return path


def region_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An ADE20K-like annotation uint8 [height, width] in 0..150: a background class,
    then 10-60 filled ellipses / rectangles / polygons (large and small) of 4-20 classes
    drawn from 0..150 (0 = 'other' included): a region map, as real annotations are,
    not noise. INFERRED: ADE20K images hold ~10-20 classes; the resulting PNGs (~0.013
    bytes per pixel) were not compared with the real annotations' sizes."""
    from PIL import Image, ImageDraw

    classes = rng.choice(151, size=int(rng.integers(4, 21)), replace=False)
    mask = Image.new("L", (width, height), int(classes[0]))
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(10, 61))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        size = rng.choice([0.03, 0.1, 0.35])  # small objects, parts, large regions
        rx, ry = rng.uniform(0.2, 1.0) * size * width, rng.uniform(0.2, 1.0) * size * height
        c = int(rng.choice(classes))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=c)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=c)
        else:
            points = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in np.sort(rng.uniform(0, 2 * np.pi, 5))]
            draw.polygon(points, fill=c)
    return np.asarray(mask, np.uint8)


def write_ade20k_like(folder: str | os.PathLike, *, train: int, val: int, seed: int = 0,
                      sizes=ADE20K_SIZES, quality: int = 90) -> pathlib.Path:
    """An ADE20K-like ``ADEChallengeData2016.zip`` in ``folder``: ``train`` + ``val``
    photo-like JPEGs (`ilsvrc_fixture.natural_pixels`, quality ``quality``) at the
    (H, W) of ``sizes`` in turn, each with a `region_mask` annotation."""
    from ilsvrc_fixture import natural_pixels

    rng = np.random.default_rng(seed)

    def members():
        for split, prefix, n in (("training", "ADE_train", train), ("validation", "ADE_val", val)):
            for i in range(n):
                h, w = sizes[i % len(sizes)]
                yield (split, f"{prefix}_{i + 1:08d}", jpeg_bytes(natural_pixels(rng, h, w), quality),
                       png_bytes(region_mask(rng, h, w)))

    return write_ade_zip(folder, members())
