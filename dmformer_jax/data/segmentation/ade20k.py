"""`ade20k`: the ADE20K scene-parsing benchmark (SceneParsing150) from ``ADEChallengeData2016.zip``.

This is the 150-class benchmark of mmsegmentation, Swin, PoolFormer and PVT, read from
the archive the user downloaded (TFDS's ``scene_parse150`` is not it: that one
downloads the 2017 instance annotations). Layout inside the zip::

    ADEChallengeData2016/images/{training,validation}/ADE_*_00000001.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*_00000001.png

Splits: ``train`` (training, 20,210 images) and ``validation`` (2,000 images).

Features:
  image: uint8 [H, W, 3]. The JPEG bytes are stored as they are (no re-encoding);
    decoding with 3 channels turns the few grayscale JPEGs into RGB.
  segmentation_mask: uint8 [H, W, 1], values 0..150 as stored: 0 = "other" (not
    evaluated; `reduce_zero_label` maps it to 255 and class c to c - 1), 1..150 the
    classes of CLASS_NAMES. PNG bytes stored as they are when the PNG is 8-bit grey.
  file_name: the image's base name, e.g. 'ADE_val_00000001.jpg'.

Checked while building (`DataError`, one line): the zip exists, it has the annotation
folder of each split, every image has its annotation, and every mask has its image's size.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from dmformer_jax.errors import DataError

ARCHIVE = "ADEChallengeData2016.zip"
ROOT = "ADEChallengeData2016"
NUM_CLASSES = 150  # after reduce_zero_label
SPLITS = {"train": "training", "validation": "validation"}

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)
assert len(CLASS_NAMES) == NUM_CLASSES


def missing_archive_message(manual_dir: str) -> str:
    return (f"{ARCHIVE} is not in manual_dir {manual_dir!r}; download it from "
            f"http://data.csail.mit.edu/places/ADEchallenge/{ARCHIVE} and put it there (not extracted)")


def _mask_png(data: bytes, name: str, image_size: tuple[int, int]) -> bytes:
    """The mask as 8-bit grey PNG bytes, checked against the image's (width, height)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as mask:
        if mask.size != image_size:
            raise DataError(
                f"{ARCHIVE}: annotation {name} is {mask.size[0]}x{mask.size[1]} but its image is "
                f"{image_size[0]}x{image_size[1]} (WxH); the archive is corrupt or mixed up, download it again"
            )
        if mask.format == "PNG" and mask.mode == "L":
            return data
        if mask.mode not in ("L", "P"):
            raise DataError(f"{ARCHIVE}: annotation {name} is a {mask.mode} image, not 8-bit class indices; "
                            "use the benchmark's ADEChallengeData2016 annotations")
        array = np.asarray(mask, np.uint8)
    out = io.BytesIO()
    Image.fromarray(array, "L").save(out, format="PNG")
    return out.getvalue()


class Ade20k(tfds.core.GeneratorBasedBuilder):
    """ADE20K SceneParsing150 (ADEChallengeData2016): 20,210 train / 2,000 validation images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: ADEChallengeData2016.zip from manual_dir."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download {ARCHIVE} (923 MB) from http://data.csail.mit.edu/places/ADEchallenge/{ARCHIVE}
    (the MIT Scene Parsing benchmark, http://sceneparsing.csail.mit.edu/) and put it,
    unextracted, in manual_dir (--config.data.manual_dir).
    """
    MANUAL_ARCHIVES = (ARCHIVE,)  # checked before TFDS runs (it rejects an empty manual_dir first)
    # What the segmentation pipeline reads (see dmformer_jax.data.segmentation).
    NUM_CLASSES = NUM_CLASSES
    CLASS_NAMES = CLASS_NAMES
    REDUCE_ZERO_LABEL = True  # label 0 = 'other' becomes 255 (ignored), c becomes c - 1

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://sceneparsing.csail.mit.edu/",
        )

    def _split_generators(self, dl_manager):
        path = os.path.join(str(dl_manager.manual_dir), ARCHIVE)
        if not os.path.isfile(path):
            raise DataError(missing_archive_message(str(dl_manager.manual_dir)))
        return {split: self._generate_examples(path, folder) for split, folder in SPLITS.items()}

    def _generate_examples(self, path: str, folder: str):
        from PIL import Image

        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            image_dir = f"{ROOT}/images/{folder}/"
            images = sorted(n for n in names if n.startswith(image_dir) and n.lower().endswith(".jpg"))
            if not images:
                raise DataError(f"{path}: no {image_dir}*.jpg in the archive; is it {ARCHIVE} of the scene "
                                "parsing benchmark?")
            mask_dir = f"{ROOT}/annotations/{folder}/"
            if not any(n.startswith(mask_dir) for n in names):
                raise DataError(f"{path} has no {mask_dir} folder (the label masks); it is not the complete "
                                f"{ARCHIVE}: download it again from http://data.csail.mit.edu/places/ADEchallenge/"
                                f"{ARCHIVE} into manual_dir")
            for name in images:
                stem = os.path.splitext(os.path.basename(name))[0]
                mask_name = f"{ROOT}/annotations/{folder}/{stem}.png"
                if mask_name not in names:
                    raise DataError(f"{path}: image {name} has no annotation {mask_name}; the archive is "
                                    "incomplete, download it again")
                image = archive.read(name)
                with Image.open(io.BytesIO(image)) as im:
                    size = im.size
                mask = _mask_png(archive.read(mask_name), mask_name, size)
                yield stem, {"image": image, "segmentation_mask": mask, "file_name": os.path.basename(name)}
