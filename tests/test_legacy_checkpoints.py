"""Files written before the backbone/heads split (tests/fixtures/legacy_v1) keep loading
and give the logits the code that wrote them gave."""

import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import dmformer_jax

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_v1"


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """A private copy, so nothing a reader might write touches the committed files."""
    root = tmp_path_factory.mktemp("legacy") / "legacy_v1"
    shutil.copytree(FIXTURE, root)
    return root


@pytest.fixture(scope="module")
def expected():
    return np.load(FIXTURE / "expected_logits.npz")


@pytest.mark.parametrize("use_ema,key", [(True, "ema"), (False, "raw")])
def test_v1_training_checkpoint_gives_the_old_logits(legacy, expected, use_ema, key):
    model, variables = dmformer_jax.load(str(legacy), use_ema=use_ema)
    logits = np.asarray(model.apply(variables, jnp.asarray(np.load(legacy / "input.npy"))))
    np.testing.assert_allclose(logits, expected[key], rtol=0, atol=1e-5)


def test_v1_safetensors_export_gives_the_old_logits(legacy, expected):
    model, variables = dmformer_jax.load(str(legacy / "export.safetensors"))
    logits = np.asarray(model.apply(variables, jnp.asarray(np.load(legacy / "input.npy"))))
    np.testing.assert_allclose(logits, expected["export"], rtol=0, atol=1e-5)
    # EMA and raw parameters differ, so the comparison above can tell which was exported.
    assert np.abs(expected["ema"] - expected["raw"]).max() > 1e-2


def test_v1_metadata_still_reads(legacy):
    meta = dmformer_jax.read_metadata(str(legacy))
    assert meta["num_classes"] == 10 and meta["step"] == 3 and meta["image_size"] == 32
    assert meta["dataset"] == "dmformer_digits"


# ----------------------------------------------------------------------------- the remap


def test_v1_remap_moves_every_module_to_its_new_place():
    from dmformer_jax.models.legacy import has_v1_layout, remap_v1_tree, to_v1_tree

    v1 = {
        "params": {
            "stem": {"conv1": {"kernel": 1}}, "downsample_1": {"conv": {"bias": 2}},
            "stage_0_block_0": {"norm1": {"scale": 3}}, "stage_3_block_12": {"mlp": {"fc1": {"bias": 4}}},
            "head_norm": {"scale": 5, "bias": 6}, "head": {"kernel": 7, "bias": 8},
        },
        "batch_stats": {"stem": {"bn1": {"mean": 9}}, "stage_0_block_0": {"token_mixer": {"bn": {"var": 10}}}},
    }
    want = {
        "params": {
            "backbone": {
                "stem": {"conv1": {"kernel": 1}}, "downsample_1": {"conv": {"bias": 2}},
                "stage_0_block_0": {"norm1": {"scale": 3}}, "stage_3_block_12": {"mlp": {"fc1": {"bias": 4}}},
            },
            "head": {"norm": {"scale": 5, "bias": 6}, "fc": {"kernel": 7, "bias": 8}},
        },
        "batch_stats": {"backbone": {"stem": {"bn1": {"mean": 9}},
                                     "stage_0_block_0": {"token_mixer": {"bn": {"var": 10}}}}},
    }
    assert has_v1_layout(v1) and not has_v1_layout(want)
    assert remap_v1_tree(v1) == want
    assert remap_v1_tree(want) == want  # today's trees pass through untouched
    assert to_v1_tree(want) == v1
    # Inside any pytree (a TrainState's optimizer moments mirror the params).
    assert remap_v1_tree((v1["params"], [v1["batch_stats"], None])) == (want["params"], [want["batch_stats"], None])
    with pytest.raises(ValueError, match="unknown key 'decoder'"):
        remap_v1_tree({"params": {"stem": {}, "decoder": {}}})


def test_v1_state_dict_remap():
    from dmformer_jax.models.legacy import remap_v1_state_dict

    v1 = {"stem.conv1.weight": 1, "stem.bn1.num_batches_tracked": 2, "downsample_2.norm.bias": 3,
          "stage_1_block_0.token_mixer.branch_0.weight": 4, "head_norm.weight": 5, "head.weight": 6,
          "head.bias": 7}
    assert remap_v1_state_dict(v1) == {
        "backbone.stem.conv1.weight": 1, "backbone.stem.bn1.num_batches_tracked": 2,
        "backbone.downsample_2.norm.bias": 3, "backbone.stage_1_block_0.token_mixer.branch_0.weight": 4,
        "head.norm.weight": 5, "head.fc.weight": 6, "head.fc.bias": 7,
    }
    today = remap_v1_state_dict(v1)
    assert remap_v1_state_dict(today) == today


def test_v1_fixture_names_remap_onto_todays_model_exactly():
    """Every array of the committed v1 files lands on a path of today's model, shape for shape."""
    import jax
    import orbax.checkpoint as ocp
    from flax import traverse_util
    from safetensors import safe_open

    from dmformer_jax.checkpoint.convert import flax_to_torch_state_dict
    from dmformer_jax.models.legacy import remap_v1_state_dict, remap_v1_tree

    model = dmformer_jax.create_model("dmformer_tiny_test", num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    want = {k: v.shape for k, v in traverse_util.flatten_dict(dict(shapes)).items()}

    with ocp.PyTreeCheckpointer() as checkpointer:
        saved = checkpointer.metadata(FIXTURE.resolve() / "checkpoints" / "3" / "state").item_metadata.tree
    for item in ("params", "ema_params"):
        tree = remap_v1_tree({"params": saved[item], "batch_stats": saved["batch_stats"]})
        got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}
        assert got == want, item

    with safe_open(str(FIXTURE / "export.safetensors"), framework="numpy") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    torch_want = {k: v.shape for k, v in flax_to_torch_state_dict(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)).items()}
    assert {k: v for k, v in remap_v1_state_dict(got).items()} == torch_want


def test_v1_training_workdir_resumes_into_todays_train_state(legacy):
    """The trainer's restore path: a v1 workdir restores into today's `TrainState` (params,
    EMA, batch_stats and the Adam moments all renamed), with the arrays it saved."""
    import json

    import jax
    import ml_collections

    from dmformer_jax import checkpoint as ckpt
    from dmformer_jax.train import mesh as mesh_lib
    from dmformer_jax.train import optim
    from dmformer_jax.train import state as state_lib

    meta = json.loads((legacy / "checkpoints" / "3" / "meta" / "metadata").read_text())
    config = ml_collections.ConfigDict(meta["config"])
    model = state_lib.build_model(config, meta["num_classes"])
    tx, _ = optim.make_optimizer(config, optim.plan_steps(config, 1000))
    abstract = state_lib.abstract_train_state(
        model, tx, image_size=32, seed=0, use_ema=True, mesh=mesh_lib.make_mesh())
    state, restored_meta = ckpt.restore(ckpt.make_manager(str(legacy), read_only=True), 3, abstract)
    assert restored_meta["step"] == 3 and int(state.step) == 3
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    for use_ema, params in ((False, state.params), (True, state.ema_params)):
        _, want = dmformer_jax.load(str(legacy), use_ema=use_ema)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params),
                     jax.tree.map(np.asarray, want["params"]))
    # Adam's first moment after 3 steps is non-zero and now lives under backbone/ and head/.
    mu = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda n: hasattr(n, "mu")) if hasattr(s, "mu")]
    assert mu and set(mu[0].mu) == {"backbone", "head"}
    assert float(np.abs(np.asarray(mu[0].mu["head"]["fc"]["kernel"])).max()) > 0
