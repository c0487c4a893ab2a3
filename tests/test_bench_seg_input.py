"""benchmarks/bench_seg_input.py --smoke runs end to end on an ADE20K-like zip prepared
by our ade20k builder (the mmseg-style contender only when DMFORMER_MMSEG_PYTHON names an
interpreter with torch + opencv-python), and rejects bad flags with one error line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_seg_input.py"
MMSEG_PYTHON = os.environ.get("DMFORMER_MMSEG_PYTHON")


def _run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def test_smoke_measures_every_contender(tmp_path):
    out = tmp_path / "seg_input.json"
    extra = ["--mmseg-python", MMSEG_PYTHON] if MMSEG_PYTHON else []
    proc = _run("--smoke", "--cache", str(tmp_path / "cache"), "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    d = result["data"]
    assert d["train_images"] == 8 and d["validation_images"] == 4
    assert 0.3 < d["jpeg_bytes_per_pixel"] < 1.0  # photo-like JPEGs, not noise, not flat
    assert d["png_bytes_per_pixel"] < 0.2  # region-structured annotations (noise in 0..150: ~1)
    names = {"ours_train_t1", "ours_eval_t1", "decode_pil_t1", "decode_tf_fast_t1", "decode_tf_accurate_t1"}
    if MMSEG_PYTHON:
        names |= {"mmseg_train_w1", "mmseg_eval_w1", "decode_cv2_t1"}
    else:
        assert "mmseg-style contender skipped" in proc.stdout
    assert names <= set(result["contenders"])
    for name in names:
        r = result["contenders"][name]
        assert r["img_per_s"] > 0 and r["img_per_cpu_s"] > 0 and sum(r["images"]) > 0
    assert result["contenders"]["ours_train_t1"]["image_dtype"] == "float32"
    assert "train_t1_over_decode_floor_per_cpu_s" in result["ratios"]
    assert ("train_t1_over_mmseg_w1_per_cpu_s" in result["ratios"]) == bool(MMSEG_PYTHON)


@pytest.mark.parametrize("flags,words", [
    (["--smoke", "--threads", "one"], "--threads"),
    (["--reps", "3"], "--cache"),
    (["--smoke", "--mmseg-python", "/nonexistent/python"], "--mmseg-python"),
    (["--cache", "/nonexistent/cache", "--batch", "0"], "--batch"),
])
def test_bad_flags_give_one_error_line(flags, words):
    proc = _run(*flags, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr


_CHECK_TRANSCRIPTION = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import mmseg_input as m
root, crop = sys.argv[2], int(sys.argv[3])
ds = m.Ade20kStyle(root, "training", "train", crop=crop, scale=(4 * crop, crop))
np.random.seed(0)
out = {"values": [], "padded": 0, "shares": [], "n": 0}
for _ in range(10):
    for i in range(len(ds)):
        img, seg = ds[i]
        assert tuple(img.shape) == (3, crop, crop) and tuple(seg.shape) == (1, crop, crop)
        s = seg.numpy()[0]
        out["values"] = sorted(set(out["values"]) | set(np.unique(s).tolist()))
        out["padded"] += int((s == 255).all(axis=1).any())
        u, c = np.unique(s[s != 255], return_counts=True)
        out["shares"].append(float(c.max() / c.sum()) if len(c) > 1 else 1.0)
        out["n"] += 1
ev = m.Ade20kStyle(root, "validation", "eval", crop=crop, scale=(4 * crop, crop))
out["eval"] = [[list(x.shape), list(y.shape)] for x, y in (ev[i] for i in range(len(ev)))]
print(json.dumps(out))
"""


@pytest.mark.skipif(not MMSEG_PYTHON, reason="set DMFORMER_MMSEG_PYTHON to an interpreter with torch + opencv-python")
def test_mmseg_transcription_follows_the_recipe(tmp_path):
    """The mmseg-style contender does mmseg's work: labels reduced to 0..149 + 255,
    crops of S x S padded with 255 when the rescaled image is smaller (ratio < 1, about
    a third of draws), cat_max_ratio honoured, eval images rescaled by mmcv's rule.

    Masks: the left 3/4 one class, the right 1/4 stripes of classes 150 and 2, so a
    random 64-wide crop of the (64 r x 256 r) rescaled image is dominated by one class
    most of the time; only the retries of the cat_max_ratio test make most crops pass."""
    import numpy as np

    import ade20k_fixture
    from dmformer_jax.data.segmentation import transforms as T

    h, w, crop = 128, 512, 64
    mask = np.ones((h, w), np.uint8)
    mask[:, 3 * w // 4:] = np.where(np.arange(w - 3 * w // 4) // 4 % 2, 150, 2)[None]
    rng = np.random.default_rng(0)
    members = [(split, f"ADE_{i}", ade20k_fixture.jpeg_bytes(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)),
                ade20k_fixture.png_bytes(mask)) for split in ("training", "validation") for i in range(4)]
    files = tmp_path / "files"
    for split, stem, jpeg, png in members:
        for kind, data, ext in (("images", jpeg, "jpg"), ("annotations", png, "png")):
            (files / kind / split).mkdir(parents=True, exist_ok=True)
            (files / kind / split / f"{stem}.{ext}").write_bytes(data)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([MMSEG_PYTHON, "-c", _CHECK_TRANSCRIPTION, str(ROOT / "benchmarks"), str(files), str(crop)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["values"] == [0, 1, 149, 255] or out["values"] == [0, 1, 149], out["values"]
    assert 0.1 < out["padded"] / out["n"] < 0.6, out["padded"]
    assert sum(share < 0.75 for share in out["shares"]) / out["n"] > 0.8, out["shares"]
    for image_shape, label_shape in out["eval"]:
        assert label_shape == [h, w]
        assert image_shape == [3, *T.rescale_size_py(h, w, (4 * crop, crop))]
