"""The research-use page and examples run as written.

Every ```python block of docs/research-use.md is executed in order, as one script, in
a fresh process with ONE device, in a folder where ``runs/digits`` is a checkpoint
saved from 8 devices by the trainer's helpers (``runs/seg``: a segmentation one); the
blocks' own asserts check the results (JAX/PyTorch logits within 1e-4, exports
bit-exact, head shapes, class-map sizes). The linear
probe example must beat chance (10%) by a wide margin on the validation split.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import research_fixture  # noqa: E402
from subprocess_runs import xla_flags  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "research-use.md")


def _python_blocks(path: str) -> list[str]:
    with open(path) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    workdir, _ = research_fixture.cached_checkpoint(tmp_path_factory)
    cwd = tmp_path_factory.mktemp("research_cwd")
    (cwd / "runs").mkdir()
    os.symlink(workdir, cwd / "runs" / "digits")
    research_fixture.make_seg_checkpoint(str(cwd / "runs" / "seg"), str(cwd / "tfds"))  # never reads data
    return cwd


def _env():
    return dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu",
                PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")


def test_doc_blocks_run(runs_dir):
    blocks = _python_blocks(DOC)
    assert len(blocks) >= 5  # load, features, export, PyTorch, fine-tuning
    script = runs_dir / "doc.py"
    script.write_text("\n".join(blocks))
    p = subprocess.run([sys.executable, str(script)], cwd=runs_dir, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "dmformer_tiny_test 10 (4, 10)" in p.stdout
    assert "reset: params/head/fc/bias, params/head/fc/kernel" in p.stdout
    assert "DMFormerSegmentation segmentation 7" in p.stdout


def test_linear_probe_example(runs_dir):
    p = subprocess.run([sys.executable, os.path.join(REPO, "examples", "linear_probe_digits.py"),
                        "--checkpoint", "runs/digits", "--steps", "200"],
                       cwd=runs_dir, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    accuracy = float(re.search(r"validation ([\d.]+)%", p.stdout).group(1))
    assert accuracy > 50.0, p.stdout
