"""The real ImageNet path: TFDS's imagenet2012 builder on a tiny ILSVRC2012 manual_dir,
then train.py with the paper's recipe config (augmentations on) for a few steps plus an
evaluation, on 8 fake CPU devices in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ilsvrc_fixture import write_tiny_ilsvrc
from subprocess_runs import xla_flags  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_imagenet_recipe_trains_and_evaluates(tmp_path):
    written = write_tiny_ilsvrc(tmp_path / "manual", images_per_class=3, val_images=4, size=40)
    workdir = tmp_path / "run"
    data_dir = tmp_path / "new" / "tfds"  # not there yet: the first-run flow creates it
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO,
               XLA_FLAGS=xla_flags(8))
    cmd = [
        sys.executable, "train.py", "--config", "configs/dmformer_s.py", f"--workdir={workdir}",
        f"--config.data.manual_dir={tmp_path / 'manual'}", f"--config.data.data_dir={data_dir}",
        "--config.model.name=dmformer_tiny_test", "--config.data.image_size=32",
        "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_train_steps=2",
        "--config.log_every_steps=1", "--config.data.shuffle_buffer=16",
    ]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = p.stdout
    n_train = len(written["train_labels"])
    assert f"{n_train:,} train / 4 eval images, 1000 classes; 8 cpu device(s)" in out
    assert (data_dir / "imagenet2012").is_dir()  # prepared into the data_dir it created
    assert "step 2/2" in out
    eval_line = [ln for ln in out.splitlines() if ln.startswith("eval step 2:")][0]
    assert "| 4 images |" in eval_line  # every validation image once, padding (4 of 8) masked
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
