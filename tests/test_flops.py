"""The MAC counter against hand-computed counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmformer_jax.flops import count_macs
from dmformer_jax.models import layers


def test_counts_dense_grouped_and_strided_convs_and_matmuls():
    x = jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(12, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x)      # -> 8x8x12
            x = layers.depthwise_conv(12, 5, dilation=2, impl="xla")(x)              # 8x8x12
            x = jnp.mean(x, axis=(1, 2))
            return nn.Dense(10)(x)

    net = Net()
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    expected = (
        2 * 8 * 8 * 12 * (3 * 3 * 8)   # strided dense conv
        + 2 * 8 * 8 * 12 * (5 * 5)     # depth-wise: one input channel per output
        + 2 * 12 * 10                  # dense
    )
    assert count_macs(net.apply, variables, x) == expected
