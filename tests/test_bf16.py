"""bfloat16 compute with float32 parameters tracks float32 training step by step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dmformer_jax
from dmformer_jax.bench import random_variables

STEPS = 6
CLASSES = 10


def _losses(dtype, variables, images, labels):
    model = dmformer_jax.create_model("dmformer_tiny_test", num_classes=CLASSES, dtype=dtype, drop_path_rate=0.0)
    tx = optax.adamw(3e-3, weight_decay=0.05)

    def loss_fn(params, batch_stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        assert logits.dtype == jnp.float32
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    @jax.jit
    def run(params, batch_stats):
        def step(carry, _):
            params, batch_stats, opt_state = carry
            (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), batch_stats, opt_state), (loss, params)

        init = (params, batch_stats, tx.init(params))
        _, (losses, seen_params) = jax.lax.scan(step, init, None, length=STEPS)
        return losses, seen_params

    losses, seen = run(variables["params"], variables["batch_stats"])
    # Parameters stay float32 in both runs (only the compute dtype changes).
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(seen))
    return np.asarray(losses)


@pytest.mark.slow
def test_bfloat16_loss_tracks_float32():
    rng = np.random.RandomState(0)
    images = jnp.asarray(rng.randn(8, 32, 32, 3).astype(np.float32))
    labels = jnp.asarray(rng.randint(0, CLASSES, 8))
    model = dmformer_jax.create_model("dmformer_tiny_test", num_classes=CLASSES)
    variables = jax.tree.map(jnp.asarray, random_variables(model, images.shape))
    f32 = _losses(jnp.float32, variables, images, labels)
    bf16 = _losses(jnp.bfloat16, variables, images, labels)
    # Training happens: the float32 loss falls over the run.
    assert f32[-1] < f32[0] - 0.1, f32
    # The bf16 run really computed in bf16 (a float32 fallback would match bitwise).
    assert not np.array_equal(f32, bf16)
    # Tolerance: bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%); the
    # logits come out of ~10 rounded layers, and AdamW's normalised updates let
    # the small gradient differences move the two runs apart slowly. 3% of the loss
    # per step allows that while a broken bf16 path (e.g. a kernel in the wrong
    # dtype, a lost BN statistic) moves the loss by far more.
    np.testing.assert_allclose(bf16, f32, rtol=3e-2, atol=0)
