"""`dmformer_digits`: the offline default dataset, a TFDS builder over sklearn's digits.

scikit-learn ships the UCI handwritten digits inside the package
(`sklearn.datasets.load_digits`: 1,797 images of 8x8 pixels, 16 grey levels, 10
classes), so this dataset builds in seconds with no network access.

Stored form: grey level g in 0..16 becomes round(g * 255 / 16), the 8x8 image is
upsampled to 32x32 (PIL bilinear: smooth strokes, no bicubic ringing) and replicated
to 3 channels, then PNG-encoded (lossless). The split is fixed: a stratified split
with `sklearn.model_selection.train_test_split(test_size=300, random_state=0)` gives
1,497 training and 300 validation images (29-31 per class in validation).

Importing this module registers the builder with TFDS (by class name).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
NUM_VALIDATION = 300
SPLIT_SEED = 0


def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The stored images and labels of each split, computed from sklearn.

    Returns:
      {'train': (uint8 [1497, 32, 32, 3], int64 [1497]),
       'validation': (uint8 [300, 32, 32, 3], int64 [300])}
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
    big = np.stack(
        [np.asarray(Image.fromarray(g).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)) for g in grey]
    )
    rgb = np.repeat(big[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        index, test_size=NUM_VALIDATION, random_state=SPLIT_SEED, stratify=labels
    )
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return {
        "train": (rgb[train_idx], labels[train_idx]),
        "validation": (rgb[val_idx], labels[val_idx]),
    }


class DmformerDigits(tfds.core.GeneratorBasedBuilder):
    """sklearn's 8x8 handwritten digits as 32x32 RGB PNGs (1,497 train / 300 validation)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything ships inside scikit-learn
        arrays = digits_arrays()
        return {name: self._generate_examples(*arrays[name]) for name in ("train", "validation")}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}
