"""The Flax model and the independent PyTorch re-implementation give the same logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch  # noqa: E402  (a test dependency: a missing torch must fail, not skip)

import dmformer_jax  # noqa: E402
from dmformer_jax.bench import random_variables  # noqa: E402
from dmformer_jax.checkpoint.convert import flax_to_torch_state_dict  # noqa: E402
from dmformer_jax.models import depthwise  # noqa: E402
from dmformer_jax.torch_model import create_torch_model  # noqa: E402


@pytest.fixture(scope="module")
def peers():
    name, classes = "dmformer_t", 10
    x = np.random.RandomState(1).randn(2, 64, 64, 3).astype(np.float32)
    model = dmformer_jax.create_model(name, num_classes=classes)
    variables = random_variables(model, x.shape)
    torch_model = create_torch_model(name, num_classes=classes).eval()
    state = flax_to_torch_state_dict(variables, like=torch_model.state_dict())
    torch_model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
        torch_features = {
            k: v.permute(0, 2, 3, 1).numpy()
            for k, v in torch_model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).items()
        }
    return name, classes, x, variables, torch_logits, torch_features


@pytest.mark.parametrize("impl", sorted(depthwise.IMPLEMENTATIONS))
def test_dmformer_t_logits_match_pytorch(peers, impl):
    name, classes, x, variables, torch_logits, _ = peers
    # XLA's depth-wise conv with plain nn.Conv; every other impl with im2col dense convs.
    conv_impl = "xla" if impl == "xla" else "im2col"
    model = dmformer_jax.create_model(name, num_classes=classes, depthwise_impl=impl, conv_impl=conv_impl)
    logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    assert np.std(torch_logits) > 0.1  # the comparison is not between near-constants
    np.testing.assert_allclose(logits, torch_logits, rtol=0, atol=1e-4)


def test_dmformer_t_features_match_pytorch(peers):
    name, classes, x, variables, _, torch_features = peers
    model = dmformer_jax.create_model(name, num_classes=classes)
    features = jax.jit(lambda v, x: model.apply(v, x, method="features"))(variables, jnp.asarray(x))
    for key, want in torch_features.items():
        np.testing.assert_allclose(np.asarray(features[key]), want, rtol=0, atol=1e-4, err_msg=key)


def test_training_mode_matches_pytorch_batch_statistics(peers):
    """train=True: BN uses batch statistics and updates running stats like PyTorch."""
    name, classes, x, variables, _, _ = peers
    model = dmformer_jax.create_model(name, num_classes=classes, drop_path_rate=0.0)
    apply = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"drop_path": jax.random.key(0)})
    )
    logits, updates = apply(variables, jnp.asarray(x))
    torch_model = create_torch_model(name, num_classes=classes, drop_path_rate=0.0).train()
    state = flax_to_torch_state_dict(variables, like=torch_model.state_dict())
    torch_model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    torch_logits = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().numpy()
    np.testing.assert_allclose(np.asarray(logits), torch_logits, rtol=0, atol=1e-4)
    # Running means after one step agree (Flax momentum 0.9 == PyTorch momentum 0.1;
    # PyTorch's running var uses the unbiased batch variance, Flax the biased one, so
    # only the means are compared).
    new_state = flax_to_torch_state_dict({"batch_stats": updates["batch_stats"]})
    sd = torch_model.state_dict()
    for key, value in new_state.items():
        if key.endswith("running_mean"):
            np.testing.assert_allclose(value, sd[key].numpy(), rtol=0, atol=1e-5, err_msg=key)


def test_backbone_with_out_norms_matches_pytorch():
    """The dense-head backbone (a LayerNorm on each returned map) against the PyTorch twin."""
    from dmformer_jax.models import VARIANTS, Backbone
    from dmformer_jax.torch_model import BackboneTorch

    kwargs = VARIANTS["dmformer_tiny_test"].model_kwargs()
    x = np.random.RandomState(2).randn(2, 64, 64, 3).astype(np.float32)
    backbone = Backbone(**kwargs, out_norms=True)
    variables = random_variables(backbone, x.shape, seed=3)
    assert set(variables["params"]) >= {f"norm_stage_{i}" for i in range(4)}
    torch_backbone = BackboneTorch(**kwargs, out_norms=True).eval()
    state = flax_to_torch_state_dict(variables, like=torch_backbone.state_dict())
    torch_backbone.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        want = {k: v.permute(0, 2, 3, 1).numpy() for k, v in torch_backbone(torch.from_numpy(x).permute(0, 3, 1, 2)).items()}
    got = jax.jit(backbone.apply)(variables, jnp.asarray(x))
    assert set(got) == set(want) == {"stage_0", "stage_1", "stage_2", "stage_3"}
    for key in want:
        assert np.std(want[key]) > 0.1
        np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=0, atol=1e-4, err_msg=key)
    # Off by default: no norms in the tree, so classifier parameters are unaffected.
    plain = jax.eval_shape(Backbone(**kwargs).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert not any(k.startswith("norm_stage") for k in plain["params"])
