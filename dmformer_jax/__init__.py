"""dmformer-jax: DMFormer (arXiv 2209.07738) in JAX/Flax."""

from dmformer_jax.api import export, export_checkpoint, features, from_torch, load, read_metadata, segment, to_torch
from dmformer_jax.models import DMFormer, DMFormerSegmentation, create_model, create_segmentation_model, list_models

__version__ = "0.1.0"
__all__ = [
    "DMFormer", "create_model", "list_models", "__version__",
    "DMFormerSegmentation", "create_segmentation_model",
    "load", "export", "export_checkpoint", "features", "segment", "read_metadata", "to_torch", "from_torch",
]
