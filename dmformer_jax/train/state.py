"""The train state (one pytree, checkpointed whole) and the model built from a config."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from dmformer_jax.backends import on_accelerator
from dmformer_jax.errors import ConfigError
from dmformer_jax.models import create_model
from dmformer_jax.models.init import fast_compile_options, init_on_zeros
from dmformer_jax.train import mesh as mesh_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(name: str, backend: str | None = None) -> str:
    """``config.model.dtype`` as a `DTYPES` key: ``'auto'`` is ``'bfloat16'`` on TPU/GPU,
    ``'float32'`` on CPU; other names are returned unchanged."""
    if name == "auto":
        return "bfloat16" if on_accelerator(backend) else "float32"
    return name


def compute_dtype(config: ml_collections.ConfigDict) -> str:
    """The `DTYPES` key this run computes in (``config.model.dtype``, 'auto' resolved).

    Raises:
      ConfigError: an unknown dtype (one line, listing the valid ones).
    """
    name = resolve_dtype(config.model.dtype)
    if name not in DTYPES:
        raise ConfigError(f"config.model.dtype={config.model.dtype!r} is not one of {sorted(DTYPES) + ['auto']}")
    return name


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs (the data position is ``step`` itself).

    Attributes:
      step: int32 scalar, loop steps done (micro-batches when accumulating).
      params: model parameters.
      batch_stats: BatchNorm running statistics.
      opt_state: optax state.
      ema_params: exponential moving average of ``params``, or None when off.
      rng: uint32 ``(2,)`` raw key data; step ``s`` uses ``fold_in(rng, s)``.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array


# config.model keys that are not DMFormer fields: the variant, and the compute dtype
# (resolved per backend here, stored by name in the checkpoint metadata).
_NOT_MODEL_FIELDS = ("name", "dtype")


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `create_model` overrides that ``config.model`` asks for (JSON-friendly).

    Every field other than ``name``/``dtype`` that is not None passes through as is
    (sequences as tuples); `dmformer_jax.models.create_model` validates the names.
    """
    m = config.model
    compute_dtype(config)
    if m.get("param_dtype") is not None and m.param_dtype not in DTYPES:
        raise ConfigError(f"config.model.param_dtype={m.param_dtype!r} is not one of {sorted(DTYPES)}")
    kwargs: dict[str, Any] = {}
    for key, value in m.items():
        if key in _NOT_MODEL_FIELDS or value is None:
            continue
        kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return kwargs


def build_model(
    config: ml_collections.ConfigDict, num_classes: int, *, create: Callable[..., nn.Module] = create_model
) -> nn.Module:
    """The model of ``config.model`` with ``num_classes`` outputs.

    ``create(name, num_classes=..., dtype=..., **fields)``: the factory (default the
    DMFormer classifier's `create_model`; tasks pass theirs, e.g.
    `create_segmentation_model`), which validates the field names and values.

    Raises:
      ConfigError: unknown model name or option, or a bad value (one line).
    """
    kwargs = model_kwargs(config)
    if "param_dtype" in kwargs:
        kwargs["param_dtype"] = DTYPES[kwargs["param_dtype"]]
    try:
        return create(
            config.model.name,
            num_classes=num_classes,
            dtype=DTYPES[compute_dtype(config)],
            **kwargs,
        )
    except ValueError as e:
        raise ConfigError(f"config.model: {e}") from None


def _make_init(model, tx, image_size: int, seed: int, use_ema: bool):
    """The function that builds a fresh `TrainState` (traced by jit or eval_shape)."""

    def init() -> TrainState:
        variables = init_on_zeros(model, jax.random.key(seed), (1, image_size, image_size, 3))
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
            # A key distinct from the init key: drop path must not reuse init randomness.
            rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)),
        )

    return init


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    image_size: int,
    seed: int,
    use_ema: bool,
    mesh: Mesh,
) -> TrainState:
    """A fresh `TrainState`, initialised directly in its replicated sharding.

    Shapes come first (``jax.eval_shape``) so the state is materialised once, on every
    device, by one jitted init.
    """
    init = _make_init(model, tx, image_size, seed, use_ema)
    abstract = jax.eval_shape(init)
    lowered = jax.jit(init, out_shardings=mesh_lib.tree_replicated(mesh, abstract)).lower()
    # Init runs once, so optimising it is wasted work: on XLA's CPU backend the
    # truncated-normal (threefry) initialisers dominate its compile time
    # (docs/architecture.md, "Implementation notes").
    return lowered.compile(compiler_options=fast_compile_options())()


def abstract_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    image_size: int,
    seed: int,
    use_ema: bool,
    mesh: Mesh,
) -> TrainState:
    """`TrainState` of ``jax.ShapeDtypeStruct`` s with shardings: a restore target."""
    sharding = mesh_lib.replicated(mesh)
    shapes = jax.eval_shape(_make_init(model, tx, image_size, seed, use_ema))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
