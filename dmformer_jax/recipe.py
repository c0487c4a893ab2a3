"""Data-recipe constants: input normalisation and the eval crop ratio of each variant.

They describe how images are prepared, not the network, so they live here instead of
the model registry. A leaf module (no TensorFlow, no models): the configs, the data
pipeline, the trainer and `dmformer_jax.api` all import it.
"""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_CROP_PCT = 0.9
# timm's eval resize ratio per variant (INFERRED, as PoolFormer-S/M): images are resized
# to floor(size / crop_pct) on the shorter side, then centre-cropped to size.
CROP_PCT: dict[str, float] = {
    "dmformer_tiny_test": 0.9,
    "dmformer_t": 0.9,
    "dmformer_s": 0.9,
    "dmformer_l": 0.95,
}


def eval_crop_pct(crop_pct: float | None, model_name: str | None) -> float:
    """``crop_pct`` when set, else the recipe's value for ``model_name`` (else 0.9)."""
    if crop_pct is not None:
        return float(crop_pct)
    return float(CROP_PCT.get(model_name or "", DEFAULT_CROP_PCT))
