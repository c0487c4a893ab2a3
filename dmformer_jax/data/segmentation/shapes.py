"""`dmformer_seg_shapes`: the offline default segmentation dataset, generated from a seed.

Each image (height and width each uniform in 48..96 px) is a textured background (a
smooth random low-saturation colour field plus per-pixel noise and faint stripes)
with 2 to 4 shapes composited at random positions and sizes (diameter 14..32 px, at
most 0.7 of the short side; later shapes cover earlier ones). Every object class has
its own shape AND its own colour (jittered by +-24 per channel, plus pixel noise):

  0 background, 1 disc (red), 2 square (green), 3 triangle (blue), 4 ring (yellow),
  5 plus (magenta), 6 diamond (cyan)

Label convention: the mask stores 0..6 and 0 is a real class (the background), so
this dataset uses ``reduce_zero_label=False`` (REDUCE_ZERO_LABEL below) and has 7
classes; nothing is ignored except the pipeline's padding (255).

Splits: 3,000 train and 300 validation images, image i of a split drawn from
``np.random.default_rng([SEED, split_id, i])``: deterministic and independent of the
order of generation. Built in a few seconds with no network (PNG, lossless).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds

SEED = 20240913
SPLIT_SIZES = {"train": 3000, "validation": 300}
SPLIT_IDS = {"train": 0, "validation": 1}
MIN_SIZE, MAX_SIZE = 48, 96
CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "plus", "diamond")
NUM_CLASSES = len(CLASS_NAMES)
COLOURS = np.array(
    [[0, 0, 0], [220, 40, 40], [40, 200, 60], [50, 80, 230], [235, 215, 40], [210, 50, 210], [40, 215, 220]],
    np.float32,
)


def _shape_mask(kind: int, yy, xx, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if kind == 1:  # disc
        return dy * dy + dx * dx <= r * r
    if kind == 2:  # square
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == 3:  # triangle, apex up
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == 4:  # ring
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == 5:  # plus
        t = r * 0.33
        return ((np.abs(dy) <= t) & (np.abs(dx) <= r)) | ((np.abs(dx) <= t) & (np.abs(dy) <= r))
    if kind == 6:  # diamond
        return np.abs(dy) + np.abs(dx) <= r
    raise ValueError(kind)


def make_example(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 [H, W, 3] image, uint8 [H, W] label map in 0..6) from ``rng``."""
    h, w = (int(v) for v in rng.integers(MIN_SIZE, MAX_SIZE + 1, size=2))
    # background: a 4x4 grid of muted colours, bilinearly upsampled, + stripes + noise
    grid = rng.uniform(50, 150, size=(4, 4, 1)) + rng.uniform(-20, 20, size=(4, 4, 3))
    ys = np.linspace(0, 3, h)[:, None]
    xs = np.linspace(0, 3, w)[None, :]
    y0, x0 = np.minimum(ys.astype(int), 2), np.minimum(xs.astype(int), 2)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    bg = (grid[y0, x0] * (1 - fy) * (1 - fx) + grid[y0 + 1, x0] * fy * (1 - fx)
          + grid[y0, x0 + 1] * (1 - fy) * fx + grid[y0 + 1, x0 + 1] * fy * fx)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 10)
    bg = bg + 10 * np.sin((yy * np.sin(angle) + xx * np.cos(angle)) * 2 * np.pi / period)[..., None]
    image = bg + rng.normal(0, 10, size=(h, w, 3))
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        kind = int(rng.integers(1, NUM_CLASSES))
        r = rng.uniform(7, min(16, 0.35 * min(h, w)))
        cy, cx = rng.uniform(r * 0.5, h - r * 0.5), rng.uniform(r * 0.5, w - r * 0.5)
        mask = _shape_mask(kind, yy, xx, cy, cx, r)
        colour = COLOURS[kind] + rng.uniform(-24, 24, size=3)
        image = np.where(mask[..., None], colour + rng.normal(0, 8, size=(h, w, 3)), image)
        label[mask] = kind
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def split_examples(split: str):
    """(index, image, label) of every example of ``split``, in order."""
    for i in range(SPLIT_SIZES[split]):
        image, label = make_example(np.random.default_rng([SEED, SPLIT_IDS[split], i]))
        yield i, image, label


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", compress_level=1)
    return out.getvalue()


class DmformerSegShapes(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes on textured backgrounds, per-pixel labels 0..6 (3,000 / 300 images)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    NUM_CLASSES = NUM_CLASSES
    CLASS_NAMES = CLASS_NAMES
    REDUCE_ZERO_LABEL = False  # 0 is the background class, a real class

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "segmentation_mask"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated from a seed
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        for i, image, label in split_examples(split):
            name = f"{split}_{i:05d}.png"
            yield i, {"image": _png(image), "segmentation_mask": _png(label), "file_name": name}
