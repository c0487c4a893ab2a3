"""Semantic segmentation data: the `ade20k` and offline `dmformer_seg_shapes` TFDS
builders (registered by importing this package) and the segmentation input pipeline.

Nothing here imports the models, the trainer, the API, the tasks or checkpoints.
"""

from dmformer_jax.data import pipeline as _cls_pipeline  # noqa: F401  (hides accelerators from TF first)
from dmformer_jax.data.segmentation.ade20k import Ade20k
from dmformer_jax.data.segmentation.pipeline import (
    AUGMENT_DEFAULTS,
    DATA_DEFAULTS,
    EvalPlan,
    SegDatasetInfo,
    SegFields,
    dataset_info,
    eval_examples,
    eval_input,
    eval_shapes,
    get_builder,
    make_eval_iterator,
    make_train_iterator,
    plan_eval,
    seg_fields,
)
from dmformer_jax.data.segmentation.shapes import DmformerSegShapes

__all__ = [
    "AUGMENT_DEFAULTS",
    "Ade20k",
    "DATA_DEFAULTS",
    "DmformerSegShapes",
    "EvalPlan",
    "SegDatasetInfo",
    "SegFields",
    "dataset_info",
    "eval_examples",
    "eval_input",
    "eval_shapes",
    "get_builder",
    "make_eval_iterator",
    "make_train_iterator",
    "plan_eval",
    "seg_fields",
]
