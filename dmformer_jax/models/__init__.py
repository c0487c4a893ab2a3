"""DMFormer modules and the variant registry."""

from dmformer_jax.models.dma import DMA
from dmformer_jax.models.dmformer import FEATURE_NAMES, FEATURE_STRIDES, Block, DMFormer, Downsample, Stem
from dmformer_jax.models.registry import VARIANTS, Variant, create_model, get_variant, list_models

__all__ = [
    "DMA", "DMFormer", "Block", "Stem", "Downsample", "FEATURE_NAMES", "FEATURE_STRIDES",
    "VARIANTS", "Variant", "create_model", "get_variant", "list_models",
]
