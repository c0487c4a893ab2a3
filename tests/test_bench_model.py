"""benchmarks/bench_model.py: its segmentation models (``HEAD:BACKBONE``) must time the
same loss in JAX and PyTorch, bad model names must be refused, and the cores-busy figure
must count every thread's CPU time.

Cheap: no model is built or compiled (the whole benchmark's ``--smoke`` takes minutes
and is run by hand, see docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import threading
import time

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


def test_cores_busy_is_total_cpu_over_total_wall():
    """Σ CPU ÷ Σ wall, so a long step weighs more than a short one (not the mean of ratios)."""
    from dmformer_jax.bench import Stats

    stats = Stats([1.0, 3.0], cpu_times=[2.0, 3.0])
    assert stats.cores_busy == pytest.approx(5.0 / 4.0)  # the mean of the ratios would be 1.5
    assert stats.as_dict(4)["cores_busy"] == pytest.approx(1.25)
    assert Stats([1.0]).cores_busy is None and "cores_busy" not in Stats([1.0]).as_dict()


def test_step_cpu_time_counts_other_threads(bench_model):
    """XLA and PyTorch compute on worker threads: the CPU time a worker reports for a
    step must include theirs, not only the calling thread's."""
    spent = []

    def burn():
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass
        spent.append(time.thread_time() - start)

    def step():
        worker = threading.Thread(target=burn)
        worker.start()
        worker.join()

    assert bench_model.time_step(step)["cpu_s"] >= 0.95 * spent[0] >= 0.28


def test_markdown_shows_each_contenders_cores_busy(bench_model):
    timing = lambda busy: {"train": {"cores_busy": busy}}  # noqa: E731
    result = {
        "machine": {"cpu_count": 2},
        "models": {"dmformer_s": {"timings": {"jax": timing(1.83), "torch_eager": timing(1.98)}}},
    }
    lines = bench_model.cores_busy_lines(result)
    assert "| dmformer_s | train step | 1.83 | 1.98 | — |" in lines, lines
    assert any("of 2 cores" in line for line in lines)
    assert bench_model.cores_busy_lines({"machine": {"cpu_count": 2}, "models": {}}) == []
