"""Segmentation models (Semantic FPN, UperNet): shapes, PyTorch's resize/pool rules,
parity with the independent PyTorch twin, and loading a classifier's backbone."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # a test dependency: a missing torch must fail, not skip
import torch.nn.functional as F

import dmformer_jax
from dmformer_jax.bench import random_variables
from dmformer_jax.checkpoint.convert import flax_to_torch_state_dict
from dmformer_jax.models import SemanticFPNHead, UPerHead, create_segmentation_model
from dmformer_jax.models.pretrained import merge_pretrained
from dmformer_jax.models.seg_ops import ClassifierConv, adaptive_avg_pool, adaptive_bins, resize_bilinear, resize_nearest
from dmformer_jax.models.segmentation import split_outputs
from dmformer_jax.torch_segmentation import create_torch_segmentation_model

TINY = dict(channels=16, neck_channels=16, aux_channels=8)  # head widths for the shape tests
TRAIN_RNGS = {"dropout": jax.random.key(1), "drop_path": jax.random.key(2)}


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def _nhwc(t):
    return t.permute(0, 2, 3, 1).detach().numpy()


# --- shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["fpn", "upernet"])
@pytest.mark.parametrize("size", [(96, 160), (224, 64)])
def test_output_shapes_non_square(head, size):
    model = create_segmentation_model("dmformer_tiny_test", head=head, num_classes=5, **TINY)
    x = jnp.zeros((2, *size, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(variables["params"]) == ({"backbone", "decode_head", "auxiliary_head"} if head == "upernet"
                                        else {"backbone", "decode_head"})
    h, w = size
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (2, h // 4, w // 4, 5) and out.dtype == jnp.float32
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs=TRAIN_RNGS)[0],
                         variables, x)
    logits, aux = split_outputs(out)
    assert logits.shape == (2, h // 4, w // 4, 5) and logits.dtype == jnp.float32
    if head == "upernet":
        assert aux.shape == (2, h // 16, w // 16, 5) and aux.dtype == jnp.float32
    else:
        assert aux is None


def test_bfloat16_compute_gives_float32_logits():
    model = create_segmentation_model("dmformer_tiny_test", head="upernet", num_classes=3, dtype=jnp.bfloat16, **TINY)
    x = jnp.zeros((1, 64, 96, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (1, 16, 24, 3) and out.dtype == jnp.float32


def test_bad_input_is_one_line_value_error():
    with pytest.raises(ValueError, match="unknown segmentation head 'psp'; valid heads: fpn, upernet"):
        create_segmentation_model("dmformer_tiny_test", head="psp")
    with pytest.raises(ValueError, match=r"unknown segmentation option\(s\) \['chanels'\]"):
        create_segmentation_model("dmformer_tiny_test", chanels=3)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        create_segmentation_model("dmformer_tiny_test", num_classes=0)
    model = create_segmentation_model("dmformer_tiny_test", **TINY)
    with pytest.raises(ValueError, match="divisible by 32") as info:
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 48, 64, 3)))
    assert "\n" not in str(info.value)


# --- PyTorch's pooling and resizing rules ----------------------------------------------

def _numpy_adaptive_avg_pool(x: np.ndarray, s: int) -> np.ndarray:
    """Transcription of PyTorch's adaptive_avg_pool2d: bin i is [floor(i·H/s), ceil((i+1)·H/s))."""
    b, h, w, c = x.shape
    out = np.zeros((b, s, s, c), np.float64)
    for i in range(s):
        h0, h1 = int(math.floor(i * h / s)), int(math.ceil((i + 1) * h / s))
        for j in range(s):
            w0, w1 = int(math.floor(j * w / s)), int(math.ceil((j + 1) * w / s))
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("scale", [3, 6])
def test_adaptive_pool_bins_match_numpy_and_torch(scale):
    x = np.random.RandomState(0).randn(2, 16, 22, 3).astype(np.float32)
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x), scale))
    np.testing.assert_allclose(got, _numpy_adaptive_avg_pool(x, scale), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, _nhwc(torch.nn.AdaptiveAvgPool2d(scale)(_nchw(x))), rtol=0, atol=1e-5)
    # 16 and 22 do not divide by 3 or 6: the bins overlap or differ in size.
    bins = adaptive_bins(22, scale)
    assert len({e - s for s, e in bins}) > 1 or any(a[1] > b[0] for a, b in zip(bins, bins[1:]))


def test_adaptive_pool_more_bins_than_pixels():
    """PPM's scale 6 on a 3×5 map (a 96×160 image's last map)."""
    x = np.random.RandomState(1).randn(1, 3, 5, 2).astype(np.float32)
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x), 6))
    np.testing.assert_allclose(got, _numpy_adaptive_avg_pool(x, 6), rtol=0, atol=1e-6)


@pytest.mark.parametrize("src,dst", [
    ((3, 5), (24, 40)),   # upsampling, uneven factors
    ((6, 10), (12, 20)),  # exact ×2
    ((6, 6), (3, 5)),     # PPM scale 6 back onto a 3×5 map: shrinking
    ((16, 22), (7, 9)),   # shrinking by non-integer factors
    ((2, 2), (3, 5)),     # PPM scale 2 onto 3×5
])
def test_bilinear_resize_matches_torch_interpolate(src, dst):
    x = np.random.RandomState(2).randn(2, *src, 3).astype(np.float32)
    got = np.asarray(resize_bilinear(jnp.asarray(x), dst))
    want = _nhwc(F.interpolate(_nchw(x), size=dst, mode="bilinear", align_corners=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("src,dst", [((3, 5), (6, 10)), ((3, 5), (7, 11)), ((7, 9), (3, 4))])
def test_nearest_resize_matches_torch_interpolate(src, dst):
    x = np.random.RandomState(3).randn(1, *src, 2).astype(np.float32)
    got = np.asarray(resize_nearest(jnp.asarray(x), dst))
    np.testing.assert_array_equal(got, _nhwc(F.interpolate(_nchw(x), size=dst, mode="nearest")))


# --- parity with the PyTorch twin --------------------------------------------------------

def _peers(head, x_shape, seed, **overrides):
    model = create_segmentation_model("dmformer_t", head=head, num_classes=7, **overrides)
    variables = random_variables(model, x_shape, seed=seed)  # every parameter and BN statistic random
    twin = create_torch_segmentation_model("dmformer_t", head=head, num_classes=7, **overrides)
    state = flax_to_torch_state_dict(variables, like=twin.state_dict())
    twin.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    return model, variables, twin


@pytest.mark.parametrize("head", ["fpn", "upernet"])
def test_dmformer_t_logits_match_pytorch(head):
    """96×160: the last map is 3×5, so PPM's scales 2 and 6 do not divide it.

    Tolerance: absolute 1e-4 on logits whose max |logit| is O(1)-O(10) (asserted)."""
    x = np.random.RandomState(4).randn(2, 96, 160, 3).astype(np.float32)
    model, variables, twin = _peers(head, x.shape, seed=5)
    with torch.no_grad():
        want = _nhwc(twin.eval()(_nchw(x)))
    got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    assert got.shape == want.shape == (2, 24, 40, 7)
    assert 0.3 < np.abs(want).max() < 100 and np.std(want) > 0.1  # not a comparison of near-constants
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.slow  # > 30 s on 2 cores (compiles); CI runs it
def test_upernet_training_mode_and_aux_head_match_pytorch():
    """train=True (dropout off): batch-statistics BN and the auxiliary head's logits agree.

    Batch 4: with 2 images PPM's scale-1 BN normalises 2 values, an ill-conditioned
    variance that turns float32 rounding into 5e-4 logit differences."""
    x = np.random.RandomState(6).randn(4, 96, 160, 3).astype(np.float32)
    kw = dict(dropout_rate=0.0, drop_path_rate=0.0)
    model, variables, twin = _peers("upernet", x.shape, seed=7, **kw)
    want = twin.train()(_nchw(x))
    out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs=TRAIN_RNGS))(
        variables, jnp.asarray(x))
    for key in ("logits", "aux_logits"):
        w = _nhwc(want[key])
        assert np.std(w) > 0.1, key
        np.testing.assert_allclose(np.asarray(out[key]), w, rtol=0, atol=1e-4, err_msg=key)
    assert out["aux_logits"].shape == (4, 6, 10, 7)


def test_channel_dropout_drops_whole_channels_in_training_only():
    """``cls``: Dropout2d semantics (whole channels per sample, kept ones scaled by 1/(1-p))."""
    rate = 0.5
    head = ClassifierConv(num_classes=8, dropout_rate=rate)
    x = jnp.asarray(np.random.RandomState(8).uniform(1.0, 2.0, (4, 5, 7, 8)).astype(np.float32))
    variables = {"params": {"conv": {"kernel": jnp.eye(8)[None, None], "bias": jnp.zeros(8)}}}  # identity
    np.testing.assert_allclose(np.asarray(head.apply(variables, x)), np.asarray(x), rtol=1e-6)  # eval: no dropout
    out = np.asarray(head.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)}))
    dropped = np.all(out == 0, axis=(1, 2))  # (B, C)
    assert np.array_equal(np.any(out == 0, axis=(1, 2)), dropped)  # never single pixels
    assert 0.2 < dropped.mean() < 0.8  # about `rate` of the 32 channels
    kept = ~dropped[:, None, None, :].repeat(5, 1).repeat(7, 2)
    np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    other = np.asarray(head.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)}))
    assert not np.array_equal(np.all(other == 0, axis=(1, 2)), dropped)  # the mask follows the rng


# --- loading a classifier's backbone -----------------------------------------------------

@pytest.mark.parametrize("head", ["fpn", "upernet"])
def test_classifier_backbone_initialises_segmentation_model(head):
    x_shape = (1, 64, 96, 3)
    classifier = dmformer_jax.create_model("dmformer_tiny_test", num_classes=10)
    pretrained = random_variables(classifier, x_shape, seed=10)
    model = create_segmentation_model("dmformer_tiny_test", head=head, num_classes=5, **TINY)
    target = random_variables(model, x_shape, seed=11)
    merged, report = merge_pretrained(target, pretrained)  # strict: norm_stage_i are expected-missing

    for collection in ("params", "batch_stats"):  # the classifier's backbone, array for array
        backbone = {k: v for k, v in merged[collection]["backbone"].items() if not k.startswith("norm_stage_")}
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, backbone),
                     pretrained[collection]["backbone"])
    np.testing.assert_array_equal(np.asarray(merged["params"]["backbone"]["norm_stage_3"]["scale"]),
                                  target["params"]["backbone"]["norm_stage_3"]["scale"])
    new_modules = {"decode_head", "auxiliary_head"} if head == "upernet" else {"decode_head"}
    for name in new_modules:  # kept at init
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, merged["params"][name]),
                     target["params"][name])
    missing_top = {tuple(p.split("/")[1:3]) if p.split("/")[1] == "backbone" else (p.split("/")[1],)
                   for p in report.missing}
    assert missing_top == {*((n,) for n in new_modules), *(("backbone", f"norm_stage_{i}") for i in range(4))}
    assert "params/decode_head/cls/conv/kernel" in report.missing
    if head == "fpn":
        assert {"params/decode_head/neck/lateral_3/kernel", "batch_stats/decode_head/scale_head_3_2/bn/mean"} <= set(report.missing)
    else:
        assert {"batch_stats/decode_head/ppm/scale_3/bn/var", "params/auxiliary_head/cls/conv/kernel"} <= set(report.missing)
    assert report.ignored == ["params/head/fc/bias", "params/head/fc/kernel",
                              "params/head/norm/bias", "params/head/norm/scale"]
    assert not report.unexpected and not report.reshaped
    assert len(report.loaded) == len(jax.tree.leaves(pretrained["params"]["backbone"])) + len(
        jax.tree.leaves(pretrained["batch_stats"]["backbone"]))
    # The merged variables run.
    out = model.apply(merged, jnp.zeros(x_shape))
    assert out.shape == (1, 16, 24, 5)


# --- initialisation (mmseg's) --------------------------------------------------------------

@pytest.mark.slow  # > 30 s on 2 cores (compiles); CI runs it
def test_fresh_heads_follow_mmseg_init():
    """Neck convs Xavier-uniform with zero bias; ConvModule convs Kaiming-normal (fan-out);
    classifier N(0, 0.01²); BN scale 1, bias 0, running stats 0/1. Heads alone, not jitted."""
    rng = np.random.RandomState(12)
    feats = {f"stage_{i}": jnp.asarray(rng.randn(1, 16 >> i, 16 >> i, c).astype(np.float32))
             for i, c in enumerate((32, 48, 64, 96))}
    fpn = SemanticFPNHead(num_classes=40, neck_channels=64, channels=96).init(jax.random.key(0), feats)
    lateral = np.asarray(fpn["params"]["neck"]["lateral_3"]["kernel"])  # (1, 1, 96, 64)
    bound = np.sqrt(6.0 / (96 + 64))
    assert np.abs(lateral).max() <= bound and np.abs(lateral).max() > 0.9 * bound
    np.testing.assert_allclose(lateral.std(), bound / np.sqrt(3), rtol=0.05)
    out = np.asarray(fpn["params"]["neck"]["fpn_0"]["kernel"])  # (3, 3, 64, 64): fans include the 3×3
    np.testing.assert_allclose(out.std(), np.sqrt(6.0 / (9 * 64 + 9 * 64)) / np.sqrt(3), rtol=0.05)
    assert not np.any(np.asarray(fpn["params"]["neck"]["fpn_0"]["bias"]))
    conv = np.asarray(fpn["params"]["scale_head_0_0"]["conv"]["kernel"])  # (3, 3, 64, 96)
    np.testing.assert_allclose(conv.std(), np.sqrt(2.0 / (9 * 96)), rtol=0.05)
    cls = np.asarray(fpn["params"]["cls"]["conv"]["kernel"])
    np.testing.assert_allclose(cls.std(), 0.01, rtol=0.1)
    assert not np.any(np.asarray(fpn["params"]["cls"]["conv"]["bias"]))
    bn, stats = fpn["params"]["scale_head_3_2"]["bn"], fpn["batch_stats"]["scale_head_3_2"]["bn"]
    assert np.all(np.asarray(bn["scale"]) == 1) and not np.any(np.asarray(bn["bias"]))
    assert np.all(np.asarray(stats["var"]) == 1) and not np.any(np.asarray(stats["mean"]))
    uper = UPerHead(num_classes=40, channels=96).init(jax.random.key(1), feats)
    ppm = np.asarray(uper["params"]["ppm"]["scale_0"]["conv"]["kernel"])  # (1, 1, 96, 96)
    np.testing.assert_allclose(ppm.std(), np.sqrt(2.0 / 96), rtol=0.05)
