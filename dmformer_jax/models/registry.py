"""Named DMFormer variants and `create_model`.

Depths and widths are our reconstruction (INFERRED; docs/architecture.md),
sized to the paper's reported accuracy level; the paper publishes neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dmformer_jax.models.dmformer import DMFormer
from dmformer_jax.models.segmentation import HEADS, DMFormerSegmentation


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named architecture: the `DMFormer` fields that differ from its defaults.

    ``drop_path_rate`` is the stochastic-depth rate that travels with the variant. Data
    recipe values (eval ``crop_pct``, mean/std) live in `dmformer_jax.recipe`; the stem
    width is derived inside the model from ``widths``.
    """

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    drop_path_rate: float
    layer_scale_init: float
    description: str

    def model_kwargs(self) -> dict[str, Any]:
        return dict(
            depths=self.depths,
            widths=self.widths,
            drop_path_rate=self.drop_path_rate,
            layer_scale_init=self.layer_scale_init,
        )


VARIANTS: dict[str, Variant] = {
    "dmformer_tiny_test": Variant(
        (1, 1, 1, 1), (8, 16, 24, 32), 0.0, 1e-5,
        "4-block model for tests and the offline demo (ours)",
    ),
    "dmformer_t": Variant(
        (2, 2, 4, 2), (32, 64, 160, 256), 0.05, 1e-5,
        "small/fast variant (ours; the paper reports none)",
    ),
    "dmformer_s": Variant(
        (2, 2, 8, 2), (64, 128, 320, 512), 0.1, 1e-5,
        "paper's -S, 82.8% top-1 (FOUND); depths/widths INFERRED",
    ),
    "dmformer_l": Variant(
        (3, 3, 18, 3), (64, 128, 320, 512), 0.3, 1e-6,
        "paper's -L, 83.6% top-1 (FOUND); depths/widths INFERRED",
    ),
}

# DMFormer fields a caller may override through create_model.
OVERRIDABLE = tuple(f.name for f in dataclasses.fields(DMFormer) if f.name not in ("parent", "name"))
SEQUENCE_FIELDS = ("depths", "widths", "kernel_sizes", "dilations")


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(VARIANTS)


def get_variant(name: str) -> Variant:
    """The `Variant` called ``name``; a one-line error listing valid names otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int = 1000, **overrides: Any) -> DMFormer:
    """Builds the variant ``name`` as a `DMFormer` module (no parameters yet).

    Args:
      name: one of `list_models()`.
      num_classes: head size (0 for a headless backbone).
      **overrides: any `DMFormer` field, e.g. ``dtype=jnp.bfloat16``,
        ``drop_path_rate=0.2``, ``fusion='sum'``, ``depthwise_impl='xla'``.

    Example::

        model = dmformer_jax.create_model('dmformer_s', num_classes=1000)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
        logits = model.apply(variables, images, train=False)
    """
    kwargs = get_variant(name).model_kwargs()
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(
            f"unknown DMFormer option(s) {unknown} for {name!r}; valid options: {', '.join(OVERRIDABLE)}"
        )
    for field in SEQUENCE_FIELDS:
        # Lists (JSON, ConfigDict) become tuples: the module is hashed by jit caches.
        if overrides.get(field) is not None:
            overrides[field] = tuple(int(v) for v in overrides[field])
    kwargs.update(overrides)
    if int(num_classes) < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    kwargs["num_classes"] = int(num_classes)
    return DMFormer(**kwargs)


def create_segmentation_model(
    backbone_name: str, head: str = "fpn", num_classes: int = 150, **overrides: Any
) -> DMFormerSegmentation:
    """Builds the variant ``backbone_name`` with a segmentation ``head`` (no parameters yet).

    Args:
      backbone_name: one of `list_models()` (its depths, widths, drop path, layer scale).
      head: ``'fpn'`` (Semantic FPN) or ``'upernet'`` (with the auxiliary FCN head).
      num_classes: classes (ADE20K: 150).
      **overrides: any `DMFormerSegmentation` field, e.g. ``channels=256``,
        ``drop_path_rate=0.3``, ``dtype=jnp.bfloat16``.

    Example::

        model = create_segmentation_model('dmformer_s', head='upernet', num_classes=150)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 512, 512, 3)))
        logits = model.apply(variables, images)            # (1, 128, 128, 150)
    """
    if head not in HEADS:
        raise ValueError(f"unknown segmentation head {head!r}; valid heads: {', '.join(HEADS)}")
    valid = tuple(f.name for f in dataclasses.fields(DMFormerSegmentation) if f.name not in ("parent", "name"))
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown segmentation option(s) {unknown}; valid options: {', '.join(valid)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    kwargs = get_variant(backbone_name).model_kwargs()
    for field in (*SEQUENCE_FIELDS, "pool_scales"):
        if overrides.get(field) is not None:
            overrides[field] = tuple(int(v) for v in overrides[field])
    kwargs.update(overrides)
    return DMFormerSegmentation(head=head, num_classes=int(num_classes), **kwargs)
