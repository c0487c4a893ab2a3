"""Image classification: soft-label cross-entropy, top-1/top-5 accuracy.

Train batches carry soft targets (mixup/cutmix/label smoothing are applied by the
input pipeline), eval batches integer labels: ``label`` float32 ``(B, K)`` and int32
``(B,)`` respectively.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dmformer_jax.tasks.base import BatchSpec, Metrics, Task

TOP_K = 5


class ClassificationTask(Task):
    """DMFormer with a classifier head over ``info.num_classes`` classes."""

    name = "classification"
    train_keys = ("image", "label")
    eval_keys = ("image", "label", "mask")

    def build_model(self, config: ml_collections.ConfigDict, info: Any) -> nn.Module:
        from dmformer_jax.train import state as state_lib  # late: train imports the tasks

        return state_lib.build_model(config, int(info.num_classes))

    def loss(self, outputs: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, Metrics]:
        """Mean cross-entropy of logits ``(B, K)`` against soft targets ``label``
        ``(B, K)``; ``top1``: argmax of the logits equals argmax of the targets."""
        labels = batch["label"]
        loss = optax.softmax_cross_entropy(outputs, labels).mean()
        top1 = jnp.mean(jnp.argmax(outputs, -1) == jnp.argmax(labels, -1)).astype(jnp.float32)
        return loss, {"top1": top1}

    def eval_sums(self, outputs: jax.Array, batch: Mapping[str, jax.Array], mask: jax.Array) -> Metrics:
        """``top1``/``top5`` correct counts, summed cross-entropy ``loss`` and ``count``
        over the real examples; logits ``(B, K)``, integer ``label`` ``(B,)``."""
        labels = batch["label"]
        k = min(TOP_K, outputs.shape[-1])  # fewer than 5 classes: top-5 is top-K
        _, top_k = jax.lax.top_k(outputs, k)
        hit_k = jnp.any(top_k == labels[:, None], axis=-1)
        hit_1 = top_k[:, 0] == labels
        loss = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
        return {
            "top1": jnp.sum(hit_1 * mask),
            "top5": jnp.sum(hit_k * mask),
            "loss": jnp.sum(loss * mask),
            "count": jnp.sum(mask),
        }

    def finalize(self, totals: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Top-1/top-5 (fractions) and mean loss over ``num_examples`` examples."""
        count = float(totals["count"])
        return {
            "top1": float(totals["top1"]) / count,
            "top5": float(totals["top5"]) / count,
            "loss": float(totals["loss"]) / count,
            "num_examples": count,
        }

    def eval_target_spec(self, config: ml_collections.ConfigDict, batch_size: int) -> BatchSpec:
        return {"label": ((batch_size,), np.int32)}

    def progress_fields(self, metrics: Mapping[str, float]) -> Sequence[str]:
        return [f"top1 {100 * metrics['top1']:.1f}%"]

    def eval_summary(self, metrics: Mapping[str, float]) -> str:
        return (
            f"top1 {100 * metrics['top1']:.2f}% | top5 {100 * metrics['top5']:.2f}% | "
            f"loss {metrics['loss']:.4f} | {int(metrics['num_examples'])} images"
        )
