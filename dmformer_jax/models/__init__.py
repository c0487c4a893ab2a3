"""DMFormer modules (backbone, heads, classifier) and the variant registry."""

from dmformer_jax.models.backbone import FEATURE_NAMES, FEATURE_STRIDES, Backbone, Block, Downsample, Stem
from dmformer_jax.models.dma import DMA
from dmformer_jax.models.dmformer import DMFormer
from dmformer_jax.models.heads import ClassifierHead
from dmformer_jax.models.registry import (
    VARIANTS, Variant, create_model, create_segmentation_model, get_variant, list_models,
)
from dmformer_jax.models.seg_heads import FCNHead, SemanticFPNHead, UPerHead
from dmformer_jax.models.segmentation import DMFormerSegmentation

__all__ = [
    "DMA", "DMFormer", "Backbone", "ClassifierHead", "Block", "Stem", "Downsample",
    "FEATURE_NAMES", "FEATURE_STRIDES", "VARIANTS", "Variant", "create_model", "get_variant", "list_models",
    "DMFormerSegmentation", "SemanticFPNHead", "UPerHead", "FCNHead", "create_segmentation_model",
]
