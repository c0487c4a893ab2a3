"""Segmentation checkpoints in research code: `load`/`export` of a segmentation run,
`segment` against an independent PyTorch reference of the evaluation's preprocessing,
and ``python -m dmformer_jax.plot`` on a segmentation workdir (pixels of the drawn
panels and the curve data checked against the dataset, `segment` and metrics.jsonl)."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmformer_jax
from dmformer_jax.checkpoint import metadata
from dmformer_jax.errors import CheckpointError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """``(workdir, arrays, records)``: a segmentation workdir as train.py leaves it (one
    checkpoint of configs/seg_default.py with random weights, a metrics.jsonl written by
    the trainer's writer), its data folder shared with the session's other seg runs."""
    from tests import research_fixture
    from tests import subprocess_runs as sp
    from dmformer_jax.train.logger import MetricsWriter

    data_dir = sp.session_env(tmp_path_factory.getbasetemp())["DATA_DIR"]
    workdir = str(tmp_path_factory.mktemp("seg_research") / "run")
    arrays = research_fixture.make_seg_checkpoint(workdir, data_dir)
    writer = MetricsWriter(workdir, flush_secs=3600)
    for step, loss in [(1, 2.1), (2, 1.7), (3, 1.25), (4, 1.0), (5, 0.875)]:
        writer.write(step, "train", {"loss": loss, "pixel_acc": 0.5 + step / 20, "lr": 1e-3})
    evals = {2: (0.25, 0.75), 4: (0.5, 0.875), 5: (0.625, 0.9375)}
    for step, (miou, aacc) in evals.items():
        writer.write(step, "eval", {"mIoU": miou, "aAcc": aacc, "mAcc": miou, "num_images": 300.0})
    writer.close()
    return workdir, arrays, evals


def _equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


# ----------------------------------------------------------------- load / export


def test_record_names_the_task_and_rebuilds_the_segmentation_model():
    model = dmformer_jax.create_segmentation_model("dmformer_tiny_test", head="upernet", num_classes=5, channels=16)
    record = metadata.record(model, image_size=64, crop_pct=1.0, mean=MEAN, std=STD)
    assert record["task"] == "segmentation" and record["num_classes"] == 5
    rebuilt = metadata.model_from_metadata(record)
    assert isinstance(rebuilt, dmformer_jax.DMFormerSegmentation)
    assert metadata.architecture_of(rebuilt) == record["architecture"] and rebuilt.channels == 16
    classifier = dmformer_jax.create_model("dmformer_tiny_test", num_classes=3)
    assert metadata.record(classifier, image_size=32, crop_pct=1.0, mean=MEAN, std=STD)["task"] == "classification"
    with pytest.raises(CheckpointError, match="task 'depth'"):
        metadata.model_from_metadata({**record, "task": "depth"})


def test_load_and_export_a_segmentation_checkpoint(seg_run, tmp_path):
    workdir, arrays, _ = seg_run
    # One device: an Orbax save of arrays replicated over the session's 8 compiles a
    # slice program per array shape (about a minute on this CPU).
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    model, variables = dmformer_jax.load(workdir, sharding=one)
    assert isinstance(model, dmformer_jax.DMFormerSegmentation)
    assert (model.head, model.num_classes, model.channels, model.neck_channels) == ("fpn", 7, 32, 32)
    assert _equal(variables["params"], arrays["ema_params"]) and _equal(variables["batch_stats"], arrays["batch_stats"])
    raw_model, raw = dmformer_jax.load(workdir, use_ema=False, sharding=one)
    assert raw_model == model and _equal(raw["params"], arrays["params"])

    meta = dmformer_jax.read_metadata(workdir)
    dmformer_jax.export(str(tmp_path / "seg_export"), model, variables, metadata=meta)  # Orbax folder
    dmformer_jax.export_checkpoint(workdir, str(tmp_path / "seg.safetensors"))  # PyTorch names
    for name in ("seg_export", "seg.safetensors"):
        path = str(tmp_path / name)
        meta = dmformer_jax.read_metadata(path)
        assert meta["task"] == "segmentation" and meta["config"]["data"]["name"] == "dmformer_seg_shapes"
        model2, variables2 = dmformer_jax.load(path, sharding=one)
        assert model2 == model and _equal(variables2, variables), name

    with pytest.raises(CheckpointError, match="segmentation checkpoint"):
        dmformer_jax.load(workdir, num_classes=3, reset_head=True)


# ----------------------------------------------------------------- segment


def _random_variables(model, rng):
    """Variables with fan-in-scaled normal kernels and zero biases: random, but the
    class maps vary within an image (a real init's near-zero classifier would not)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))

    def leaf(path, s):
        name = path[-1].key
        if name in ("bias", "mean"):
            return np.zeros(s.shape, s.dtype)
        if name in ("scale", "var"):
            return np.ones(s.shape, s.dtype)
        return (rng.normal(0, 1, s.shape) / math.sqrt(int(np.prod(s.shape[:-1])) or 1)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def _torch_twin(variables, **kw):
    """The PyTorch twin (`dmformer_jax.torch_segmentation`) of the model, with ``variables``."""
    import torch

    from dmformer_jax.checkpoint.convert import flax_to_torch_state_dict
    from dmformer_jax.torch_segmentation import create_torch_segmentation_model

    twin = create_torch_segmentation_model("dmformer_tiny_test", **kw)
    state = flax_to_torch_state_dict(jax.device_get(variables), like=twin.state_dict())
    twin.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state.items()}, strict=True)
    return twin.eval()


def _reference_class_map(twin, image, short=64, long=256, divisor=32):
    """The evaluation of one image, written from mmseg/PVT in PyTorch alone: AlignResize
    (rescale so the short side <= short and the long side <= long, int(side * f + 0.5);
    then each side rounded up to a multiple of 32; bilinear, align_corners=False, no
    antialiasing, pixels rounded to 0..255 after each resize), normalise, the twin's
    logits resized to the resized image, then to the original size, argmax.
    Returns (class map, the gap between the two largest logits per pixel)."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[:2]
    f = min(long / max(h, w), short / min(h, w))
    h1, w1 = int(h * f + 0.5), int(w * f + 0.5)
    h2, w2 = -(-h1 // divisor) * divisor, -(-w1 // divisor) * divisor

    def resize(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)

    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    x = resize(x, (h1, w1)).round().clamp(0, 255)
    x = resize(x, (h2, w2)).round().clamp(0, 255)
    x = (x / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = twin(x).double()
    assert tuple(logits.shape[2:]) == (h2 // 4, w2 // 4)
    z = resize(resize(logits, (h2, w2)), (h, w))[0].permute(1, 2, 0).numpy()
    top2 = np.sort(z, axis=-1)[..., -2:]
    return z.argmax(-1), top2[..., 1] - top2[..., 0]


def test_segment_matches_an_independent_pytorch_evaluation():
    kw = dict(head="fpn", num_classes=5, neck_channels=16, channels=16)
    model = dmformer_jax.create_segmentation_model("dmformer_tiny_test", **kw)
    variables = _random_variables(model, np.random.default_rng(0))
    twin = _torch_twin(variables, **kw)
    # A model trained elsewhere: the record gives the eval scale (4 * 64, 64) and mean/std.
    meta = metadata.record(model, image_size=64, crop_pct=1.0, mean=MEAN, std=STD)
    rng = np.random.default_rng(1)
    images = []
    for h, w in [(45, 70), (90, 33)]:  # -> 64x100 -> 64x128; 175x64 -> 192x64
        yy, xx = np.mgrid[:h, :w]
        smooth = np.stack([120 + 100 * np.sin(yy / 5), 120 + 100 * np.cos(xx / 7), 2.0 * (yy + xx)], -1)
        images.append(np.clip(smooth + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))

    maps = dmformer_jax.segment(model, variables, images, meta)
    assert isinstance(maps, list) and len(maps) == 2
    for image, got in zip(images, maps):
        want, gap = _reference_class_map(twin, image)
        assert got.shape == image.shape[:2] and got.dtype == np.int32
        assert len(np.unique(want)) >= 3  # a map worth comparing
        differ = got != want
        assert np.all(gap[differ] < 1e-4), (differ.sum(), gap[differ].max())  # ties only
        assert differ.mean() < 0.002
    one = dmformer_jax.segment(model, variables, images[1], meta)
    assert np.array_equal(one, maps[1])
    with pytest.raises(ValueError, match="uint8"):
        dmformer_jax.segment(model, variables, images[0].astype(np.float32), meta)
    with pytest.raises(ValueError, match="segmentation"):
        dmformer_jax.segment(model, variables, images[0], {**meta, "task": "classification"})


# ----------------------------------------------------------------- plot


@pytest.mark.slow  # builds dmformer_seg_shapes (~12 s) and compiles 2 image sizes: ~50 s on 2 loaded cores
def test_plot_draws_predictions_and_curves_of_a_segmentation_workdir(seg_run, tmp_path, capsys):
    import tensorflow_datasets as tfds
    from PIL import Image

    from dmformer_jax import plot
    from dmformer_jax.train.logger import read_metrics

    workdir, _, evals = seg_run
    out = str(tmp_path / "seg.png")
    assert plot.main([workdir, "--out", out, "--num_images", "2"]) == 0
    png = np.asarray(Image.open(out).convert("RGB"))

    # The first two validation examples, read here straight from TFDS (shapes has a real
    # class 0: no reduce_zero_label), and their class maps from `segment`.
    meta = dmformer_jax.read_metadata(workdir)
    builder = tfds.builder("dmformer_seg_shapes", data_dir=meta["config"]["data"]["data_dir"])
    ds = builder.as_dataset(split="validation", shuffle_files=False,
                            read_config=tfds.ReadConfig(interleave_cycle_length=1)).take(2)
    examples = [(ex["image"], ex["segmentation_mask"][..., 0].astype(np.int32)) for ex in tfds.as_numpy(ds)]
    model, variables = dmformer_jax.load(workdir, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    preds = dmformer_jax.segment(model, variables, [image for image, _ in examples], meta)
    assert any(len(np.unique(p)) > 1 for p in preds)

    colours = plot.palette(7)
    tab10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
             (227, 119, 194)]
    assert colours.tolist() == [list(c) for c in tab10]

    # Grid: 3 panels per row, each the largest example enlarged by 192 // its long side.
    cell_h = max(img.shape[0] for img, _ in examples)
    cell_w = max(img.shape[1] for img, _ in examples)
    zoom = max(1, 192 // max(cell_h, cell_w))
    grid_h = plot.HEADER + 2 * (zoom * cell_h + plot.GAP)
    assert png.shape[1] >= 3 * (zoom * cell_w + plot.GAP)
    curves_h = png.shape[0] - grid_h
    assert 250 < curves_h < 400, png.shape  # the 3.2-inch curves at 100 dpi on top

    for row, ((image, label), pred) in enumerate(zip(examples, preds)):
        h, w = image.shape[:2]
        expected = {
            "image": image,
            "ground truth": ((image.astype(int) + colours[label]) // 2).astype(np.uint8),
            "prediction": ((image.astype(int) + colours[pred]) // 2).astype(np.uint8),
        }
        for col, name in enumerate(plot.PANELS):
            top = curves_h + plot.HEADER + row * (zoom * cell_h + plot.GAP)
            left = col * (zoom * cell_w + plot.GAP)
            panel = png[top:top + zoom * h, left:left + zoom * w]
            assert np.array_equal(panel[::zoom, ::zoom], expected[name]), (row, name)
            assert np.array_equal(panel, np.repeat(np.repeat(expected[name], zoom, 0), zoom, 1)), (row, name)

    curves = plot.seg_curves(read_metrics(workdir))
    assert curves["eval_step"] == list(evals) and curves["mIoU"] == [v[0] for v in evals.values()]
    assert curves["aAcc"] == [v[1] for v in evals.values()]
    assert curves["train_step"] == [1, 2, 3, 4, 5] and curves["loss"] == [2.1, 1.7, 1.25, 1.0, 0.875]

    # Without a checkpoint (early in a run): the curves only, and a warning.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text(open(os.path.join(workdir, "metrics.jsonl")).read())
    capsys.readouterr()
    assert plot.main([str(bare)]) == 0
    assert "warning: no prediction panels" in capsys.readouterr().err
    assert np.asarray(Image.open(bare / "curves.png")).shape[0] == curves_h
    assert plot.main([str(bare), "--num_images", "-1"]) == 2
