"""benchmarks/bench_model.py's segmentation models (``HEAD:BACKBONE``): the JAX and the
PyTorch contenders must time the same loss, and bad model names must be refused.

Cheap: no model is built or compiled (the whole benchmark's ``--smoke`` takes minutes
and is run by hand, see docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_model():
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "benchmarks" / "bench_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_model"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_model", None)


def test_model_names_parse_and_bad_ones_exit_2(bench_model, capsys):
    args = bench_model.parse_args(["--models", "dmformer_tiny_test,upernet:dmformer_tiny_test"])
    assert [(s.backbone, s.head) for s in args.specs] == [("dmformer_tiny_test", None), ("dmformer_tiny_test", "upernet")]
    assert [s.head for s in bench_model.parse_args(["--smoke"]).specs] == [None, "fpn"]  # smoke covers both kinds
    for bad, message in (("psp:dmformer_s", "unknown segmentation head 'psp'"), ("fpn:dmformer_q", "unknown model")):
        with pytest.raises(SystemExit) as exc:
            bench_model.parse_args(["--models", bad])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("head", ["fpn", "upernet"])
def test_jax_and_torch_contenders_compute_the_same_segmentation_loss(bench_model, head):
    """The JAX loss (the segmentation task's) and the twin's (F.interpolate +
    F.cross_entropy(ignore_index=255), + 0.4 × aux for UperNet) on the same logits."""
    spec = bench_model.ModelSpec.parse(f"{head}:dmformer_tiny_test")
    rng = np.random.RandomState(0)
    labels = spec.labels(rng, 2, 32)
    assert labels.shape == (2, 32, 32) and 0.05 < np.mean(labels == 255) < 0.15
    assert labels[labels != 255].max() < bench_model.SEG_CLASSES
    k = bench_model.SEG_CLASSES
    outputs = {"logits": rng.randn(2, 8, 8, k).astype(np.float32) * 3}
    if head == "upernet":
        outputs["aux_logits"] = rng.randn(2, 2, 2, k).astype(np.float32) * 3
    jax_out = {n: jnp.asarray(v) for n, v in outputs.items()}
    torch_out = {n: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2))) for n, v in outputs.items()}
    if head == "fpn":  # the Semantic FPN model returns a bare array / tensor
        jax_out, torch_out = jax_out["logits"], torch_out["logits"]
    got = float(spec.jax_loss(spec.jax_model())(jax_out, jnp.asarray(labels)))
    want = float(spec.torch_loss()(torch_out, torch.from_numpy(labels.astype(np.int64))))
    assert want > 1.0  # random logits: a real cross-entropy, not 0 from all-ignored pixels
    np.testing.assert_allclose(got, want, rtol=1e-5)
