"""benchmarks/bench_input.py --smoke runs end to end (without timm) on JPEGs prepared by
TFDS's imagenet2012 builder, and rejects bad flags with one error line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_input.py"


def _run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_smoke_measures_every_contender(tmp_path):
    out = tmp_path / "input.json"
    proc = _run("--smoke", "--cache", str(tmp_path / "cache"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "timm contender skipped" in proc.stdout
    result = json.loads(out.read_text())
    assert result["data"]["train_images"] == 16 and result["data"]["validation_images"] == 8
    assert 0.3 < result["data"]["bytes_per_pixel"] < 1.0  # photo-like JPEGs, not noise, not flat
    names = {"ours_train_t1", "ours_eval_t1", "decode_pil_t1", "decode_tf_fast_t1", "decode_tf_accurate_t1"}
    assert names <= set(result["contenders"])
    for name in names:
        r = result["contenders"][name]
        assert r["img_per_s"] > 0 and r["img_per_cpu_s"] > 0 and sum(r["images"]) > 0
    assert result["contenders"]["ours_train_t1"]["image_dtype"] == "float32"
    assert "train_t1_over_decode_floor" in result["ratios"]
    assert result["machine"]["cpu_isa_flags"] is not None


@pytest.mark.parametrize("flags,words", [
    (["--smoke", "--threads", "one"], "--threads"),
    (["--reps", "3"], "--cache"),
    (["--smoke", "--timm-python", "/nonexistent/python"], "--timm-python"),
])
def test_bad_flags_give_one_error_line(flags, words):
    proc = _run(*flags, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
