"""benchmarks/bench_seg_input.py --smoke runs end to end on an ADE20K-like zip prepared
by our ade20k builder, and rejects bad flags with one error line. The mmseg-style
contender is timed only after its transcription passes a self-check (mmseg_input.py
--mode check); with DMFORMER_MMSEG_PYTHON naming an interpreter with torch + opencv-python
the real check runs and the contender is timed, without it a stand-in that fails the
check shows the contender is then not timed."""

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


def _failing_interpreter(folder: Path) -> str:
    """A stand-in "python" whose mmseg-style transcription fails its self-check."""
    fake = folder / "python"
    fake.write_text("#!/bin/sh\necho \"error: the mmseg-style transcription does not do mmseg's work: "
                    "labels [1, 2, 150]: not reduced to 0..149 (+255)\" >&2\nexit 1\n")
    fake.chmod(0o755)
    return str(fake)


def test_smoke_measures_every_contender(tmp_path):
    """With DMFORMER_MMSEG_PYTHON the mmseg-style contender passes its self-check and is
    timed; without it, a transcription failing the self-check is not timed (the check's
    message is in the results) and ours are measured all the same."""
    out = tmp_path / "seg_input.json"
    mmseg_python = MMSEG_PYTHON or _failing_interpreter(tmp_path)
    proc = _run("--smoke", "--cache", str(tmp_path / "cache"), "--out", str(out), "--mmseg-python", mmseg_python)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    d = result["data"]
    assert d["train_images"] == 8 and d["validation_images"] == 4
    assert 0.3 < d["jpeg_bytes_per_pixel"] < 1.0  # photo-like JPEGs, not noise, not flat
    assert d["png_bytes_per_pixel"] < 0.2  # region-structured annotations (noise in 0..150: ~1)
    names = {"ours_train_t1", "ours_eval_t1", "decode_pil_t1", "decode_tf_fast_t1", "decode_tf_accurate_t1"}
    if MMSEG_PYTHON:
        names |= {"mmseg_train_w1", "mmseg_eval_w1", "decode_cv2_t1"}
        assert "mmseg-style transcription self-check passed" in proc.stdout
    else:
        assert "not reduced to 0..149" in result["mmseg"]["check_error"]
        assert not any(name.startswith("mmseg_") or name == "decode_cv2_t1" for name in result["contenders"])
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
