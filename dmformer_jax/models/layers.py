"""Small building blocks shared by the DMFormer modules.

Every module here works on NHWC activations (``(B, H, W, C)``). Parameter names
follow the PyTorch convention of the reconstruction (``kernel``/``bias`` for convs
and dense layers, ``scale``/``bias`` for norms, ``gamma`` for layer scale) so that
`dmformer_jax.checkpoint.convert` can map them 1:1 to a PyTorch ``state_dict``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from dmformer_jax.models import dense_conv, depthwise

Dtype = Any
Array = jax.Array

# Truncated normal std 0.02 for kernels, zeros for biases (spec: "Init").
# `truncated_normal(stddev)` scales a standard normal truncated to [-2, 2], whose own
# std is 0.8796, so it alone would give std 0.0176; divide it out (as Flax's
# variance_scaling does) so the kernels' std is 0.02 like timm's trunc_normal_(std=.02).
TRUNCATED_STD_OF_UNIT_NORMAL = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]
kernel_init = nn.initializers.truncated_normal(stddev=0.02 / TRUNCATED_STD_OF_UNIT_NORMAL)
bias_init = nn.initializers.zeros

LAYER_NORM_EPS = 1e-6
BATCH_NORM_EPS = 1e-5
# PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (Flax keeps 0.9 of the old value).
BATCH_NORM_MOMENTUM = 0.9


def conv(
    features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = True,
    impl: str = "auto",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> "Conv":
    """A dense 2-D convolution with explicit symmetric padding (PyTorch semantics).

    Explicit padding (rather than 'SAME') keeps strided convs identical to the
    PyTorch re-implementation, which pads both sides equally. ``impl`` chooses how it
    is computed (`Conv`); the parameters are ``nn.Conv``'s either way.
    """
    return Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        bias_init=bias_init,
        impl=impl,
        name=name,
    )


def dense(
    features: int,
    *,
    impl: str = "xla",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> "Dense":
    """A dense layer with the project's initialisers; ``impl`` as for `conv` (`Dense`)."""
    return Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        bias_init=bias_init,
        impl=impl,
        name=name,
    )


def layer_norm(param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over the channel (last) axis, computed in float32."""
    return nn.LayerNorm(
        epsilon=LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=param_dtype, name=name
    )


def batch_norm(
    train: bool, param_dtype: Dtype = jnp.float32, name: str | None = None
) -> nn.BatchNorm:
    """BatchNorm over N, H, W computed in float32.

    Under ``jax.jit`` with a batch sharded over a mesh, the batch mean/variance are
    global (XLA inserts the cross-device reduction), so no ``axis_name`` is needed.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPS,
        dtype=jnp.float32,
        param_dtype=param_dtype,
        name=name,
    )


class Conv(nn.Conv):
    """A dense convolution whose computation is chosen by ``impl``.

    The parameters are exactly ``nn.Conv``'s (``kernel`` ``(k, k, C_in, C_out)``,
    ``bias`` ``(C_out,)``), so checkpoints do not depend on ``impl``; ``'xla'`` runs
    ``nn.Conv`` itself, ``'im2col'`` computes 1×1 convs as a matmul and the gradients
    of k×k convs through im2col matmuls (`dmformer_jax.models.dense_conv`).
    Build it with `conv`, which sets symmetric explicit padding.
    """

    impl: str = "auto"

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs``: ``(B, H, W, C_in)`` -> ``(B, H', W', C_out)``."""
        impl = dense_conv.resolve_impl(self.impl)
        if impl == "xla":
            return super().__call__(inputs)
        kernel = self.param(
            "kernel", self.kernel_init, (*self.kernel_size, inputs.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        (pad, _), _ = self.padding
        y = dense_conv.conv2d(inputs, kernel, stride=self.strides[0], padding=pad, impl=impl)
        return y if bias is None else y + bias


class Dense(nn.Dense):
    """``nn.Dense`` whose matmul over ``(..., C)`` inputs is chosen by ``impl``.

    The parameters are exactly ``nn.Dense``'s (``kernel`` ``(C_in, C_out)``, ``bias``).
    A dense-conv ``impl`` (`dmformer_jax.models.dense_conv`) that resolves to ``'xla'``
    runs ``nn.Dense`` itself; the CPU implementations merge the leading axes first
    (`dense_conv.flat_matmul`: 2-D gradients, faster on XLA's CPU backend).
    """

    impl: str = "xla"

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs``: ``(..., C_in)`` -> ``(..., C_out)``."""
        if inputs.ndim <= 2 or dense_conv.resolve_impl(self.impl) == "xla":
            return super().__call__(inputs)
        flat = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return flat.reshape(*inputs.shape[:-1], self.features)


class DepthwiseConv(nn.Conv):
    """Depth-wise ``k×k`` convolution: a ``flax.linen.Conv`` with ``feature_group_count=C``.

    The parameters are exactly ``nn.Conv``'s (``kernel`` ``(k, k, 1, C)``, ``bias``
    ``(C,)``). ``impl`` only swaps the function that computes the convolution (see
    `dmformer_jax.models.depthwise`); ``'xla'`` runs ``nn.Conv`` itself. So every
    implementation reads and writes the same checkpoints.

    Build it with `depthwise_conv`, which sets the grouping and "same" padding.
    """

    impl: str = "auto"

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs``: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        impl = depthwise.resolve_impl(self.impl)
        if impl == "xla":
            return super().__call__(inputs)
        channels = inputs.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (*self.kernel_size, 1, channels), self.param_dtype
        )
        bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        (pad, _), _ = self.padding
        y = depthwise.depthwise_conv2d(
            inputs, kernel, dilation=self.kernel_dilation[0], padding=pad, impl=impl
        )
        return y + bias


def depthwise_conv(
    channels: int,
    kernel_size: int,
    *,
    dilation: int = 1,
    impl: str = "auto",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> DepthwiseConv:
    """A depth-wise conv that keeps ``H×W`` (pad = d·(k−1)/2 on each side)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"depth-wise kernel sizes must be odd to keep H×W, got {kernel_size}")
    pad = dilation * (kernel_size - 1) // 2
    return DepthwiseConv(
        channels,
        (kernel_size, kernel_size),
        kernel_dilation=(dilation, dilation),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=channels,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        bias_init=bias_init,
        impl=impl,
        name=name,
    )


class DropPath(nn.Module):
    """Stochastic depth: drops whole samples of a residual branch in training.

    Each sample is kept with probability ``1 - rate`` and scaled by ``1/(1 - rate)``.
    Identity when ``deterministic`` or ``rate == 0``. Uses the ``'drop_path'`` RNG.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        """``x``: ``(B, ...)`` -> same shape."""
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("drop_path"), keep, mask_shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class LayerScale(nn.Module):
    """Per-channel learnable scale ``gamma`` (CaiT layer scale)."""

    init_value: float
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        gamma = self.param(
            "gamma", nn.initializers.constant(self.init_value), (x.shape[-1],), self.param_dtype
        )
        return x * gamma.astype(x.dtype)


class Mlp(nn.Module):
    """Channel MLP: Dense(ratio·C) -> GELU (exact, erf) -> Dense(C).

    ``impl``: the dense-conv implementation (`dmformer_jax.models.dense_conv`); the two
    layers are 1×1 convs in effect, and ``'auto'`` picks the backend's (`Dense`).
    """

    hidden_features: int
    impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``x``: ``(..., C)`` -> ``(..., C)``."""
        out_features = x.shape[-1]
        kw = dict(impl=self.impl, dtype=self.dtype, param_dtype=self.param_dtype)
        x = dense(self.hidden_features, name="fc1", **kw)(x)
        # Exact GELU, as PyTorch's nn.GELU() and the MetaFormer reference use.
        x = nn.gelu(x, approximate=False)
        return dense(out_features, name="fc2", **kw)(x)


def tuple_of(values: Sequence[int]) -> tuple[int, ...]:
    """Normalise a config sequence (list, tuple, ConfigDict field) to a tuple of ints."""
    return tuple(int(v) for v in values)


ActivationFn = Callable[[Array], Array]
