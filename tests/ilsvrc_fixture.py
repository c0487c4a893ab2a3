"""A tiny fake ILSVRC2012 manual_dir that TFDS's own `imagenet2012` builder accepts.

TFDS (`tensorflow_datasets/datasets/imagenet2012`) reads two archives from
``manual_dir``:

- ``ILSVRC2012_img_train.tar``: a tar of per-synset tars ``<wnid>.tar``, each holding
  ``<wnid>_<n>.JPEG`` files; the label is the synset of the inner tar.
- ``ILSVRC2012_img_val.tar``: a flat tar of ``ILSVRC2012_val_<8 digits>.JPEG``. The
  labels come from ``validation_labels.txt`` shipped inside TFDS, zipped with the
  SORTED member names: the k-th name in sorted order gets line k. So this fixture
  writes the real first ``val_images`` file names (``..._00000001.JPEG`` on), whose
  shipped labels are the first lines of that file, and those synsets must be among
  ``synsets`` (the defaults are exactly the first four).

The images are small synthetic JPEGs (a class-dependent colour plus noise, not square),
including one greyscale and one CMYK JPEG in the train split, which the input
pipeline must decode to 3 channels. Used by tests/test_imagenet_tfds.py,
test_train_imagenet.py and test_reliability.py (a test fixture: it is not shipped in
the package).

With ``natural=True`` and ``image_sizes`` it writes ImageNet-like JPEGs instead
(`natural_pixels`: gradients, shapes, texture and a little noise, at ImageNet's
typical sizes): benchmarks/bench_input.py prepares its data set with it, so the
benchmark and the tests share one writer of the archive layout the real builder reads.
"""

from __future__ import annotations

import io
import os
import tarfile
from typing import Sequence

import numpy as np

# The synsets of ILSVRC2012_val_00000001..4.JPEG (TFDS validation_labels.txt lines 1-4).
DEFAULT_SYNSETS = ("n01751748", "n09193705", "n02105855", "n04263257")


def validation_labels(count: int) -> list[str]:
    """The synsets of ILSVRC2012_val_00000001.. in order (TFDS's shipped labels)."""
    import tensorflow_datasets as tfds

    path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    with open(os.fspath(path)) as f:
        return f.read().strip().splitlines()[:count]


def _jpeg(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels)
    if mode != image.mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _pixels(rng: np.random.Generator, class_index: int, height: int, width: int) -> np.ndarray:
    base = np.array([(37 * class_index) % 256, (91 * class_index + 60) % 256, (53 * class_index + 120) % 256])
    noise = rng.integers(-30, 31, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def natural_pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 [height, width, 3] image: a smooth two-colour gradient, 10-40
    flat-shaded ellipses / rectangles / triangles, band-limited texture at two scales
    (noise at 1/2 and 1/6 resolution, upsampled bicubically) and fine Gaussian noise
    (sigma 4).

    Pure noise would decode far slower than a photo (its entropy-coded stream is
    several times longer). Saved at quality 90 these come to ~0.5 bytes per pixel;
    ImageNet's JPEGs average ~0.6 (110 KB for ~180k pixels), so these are if anything
    a little cheaper to decode.
    """
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x / width + np.sin(angle) * y / height)[..., None]
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    base = c0 + (c1 - c0) * (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(10, 41))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.02, 0.3) * width, rng.uniform(0.02, 0.3) * height
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:
            points = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in rng.uniform(0, 2 * np.pi, 3)]
            draw.polygon(points, fill=colour)
    pixels = np.asarray(image, np.float32)
    for fraction in (1 / 2, 1 / 6):  # texture: blobs of ~2 and ~6 pixels
        low = rng.normal(0, 1, (max(int(height * fraction), 2), max(int(width * fraction), 2), 3))
        texture = np.stack([np.asarray(Image.fromarray(low[..., c].astype(np.float32)).resize((width, height),
                                                                                                Image.BICUBIC))
                            for c in range(3)], axis=-1)
        pixels += rng.uniform(15, 30) * texture
    pixels += rng.normal(0, 4, pixels.shape).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tiny_ilsvrc(
    manual_dir: str | os.PathLike,
    synsets: tuple[str, ...] = DEFAULT_SYNSETS,
    images_per_class: int = 3,
    val_images: int = 4,
    size: int = 40,
    seed: int = 0,
    garbled: int = 0,
    natural: bool = False,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, object]:
    """Writes ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into ``manual_dir``.

    Args:
      manual_dir: folder to write (created if needed).
      synsets: WordNet ids of the training classes (real ImageNet synsets).
      images_per_class: training JPEGs per synset (at least 2: the first synset holds
        the greyscale and the CMYK image).
      val_images: validation JPEGs; their labels are TFDS's shipped labels for the
        first ``val_images`` validation file names and must be among ``synsets``.
      size: image height; widths are 5/4 of it (non-square, to exercise resizing).
      seed: noise seed.
      garbled: extra undecodable training "JPEGs" (a JPEG start marker followed by
        noise) added to the last synset, to exercise the pipeline's skip-and-count.
      natural: photo-like images (`natural_pixels`) instead of colour plus noise.
      image_sizes: (height, width) pairs; each image (train and val) takes one drawn
        uniformly from this list (repeat a size to weight it). None: ``size``-based.

    Returns:
      dict(train_labels=list of (file name, synset) of the decodable training images,
      val_labels=list of (file name, synset), grayscale=file name, cmyk=file name,
      garbled=list of file names).
    """
    if images_per_class < 2:
        raise ValueError("images_per_class must be >= 2 (room for the greyscale and CMYK images)")
    val_synsets = validation_labels(val_images)
    unknown = sorted(set(val_synsets) - set(synsets))
    if unknown:
        raise ValueError(f"the first {val_images} validation images are of synsets {unknown} not in synsets; "
                         f"add them or lower val_images")
    os.makedirs(manual_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size, size * 5 // 4

    def pixels(class_index: int, portrait: bool = False) -> np.ndarray:
        h, w = (width, height) if portrait else (height, width)
        if image_sizes:
            h, w = image_sizes[int(rng.integers(len(image_sizes)))]
        return natural_pixels(rng, h, w) if natural else _pixels(rng, class_index, h, w)

    train_labels, garbled_names, grayscale, cmyk = [], [], None, None
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as outer:
        for c, wnid in enumerate(synsets):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for k in range(images_per_class):
                    name = f"{wnid}_{k + 1}.JPEG"
                    image = pixels(c)
                    if c == 0 and k == 0:
                        data, grayscale = _jpeg(image, "L"), name
                    elif c == 0 and k == 1:
                        data, cmyk = _jpeg(image, "CMYK"), name
                    else:
                        data = _jpeg(image)
                    _add(inner, name, data)
                    train_labels.append((name, wnid))
                if c == len(synsets) - 1:
                    for k in range(garbled):
                        name = f"{wnid}_{images_per_class + k + 1}.JPEG"
                        _add(inner, name, b"\xff\xd8\xff\xe0" + rng.bytes(200))
                        garbled_names.append(name)
            _add(outer, f"{wnid}.tar", inner_bytes.getvalue())
    val_labels = []
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val:
        for i, wnid in enumerate(val_synsets):
            name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
            _add(val, name, _jpeg(pixels(synsets.index(wnid), portrait=True)))
            val_labels.append((name, wnid))
    return {"train_labels": train_labels, "val_labels": val_labels, "grayscale": grayscale, "cmyk": cmyk,
            "garbled": garbled_names}
