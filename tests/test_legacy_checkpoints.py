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
