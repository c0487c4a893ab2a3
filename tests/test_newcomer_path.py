"""What a new user types, run as typed: the README's main command, paths in every form
a user writes them, and a checkpoint folder that becomes unwritable mid-run.

All run the real train.py / eval / plot / research API in subprocesses. The README test
reads the command from README.md (no second copy here), so it follows the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import subprocess_runs as sr  # noqa: E402  (tests/ is on sys.path under pytest)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sr.session_env(tmp_path_factory.getbasetemp())


# ----------------------------------------------------------------------------- README


def readme_main_command() -> str:
    """The ``train.py`` part of the first fenced shell block of README.md that runs it."""
    with open(os.path.join(sr.REPO, "README.md")) as f:
        blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", f.read(), re.S)
    for block in blocks:
        for line in block.splitlines():
            if "train.py" in line:
                parts = [p.strip() for p in line.split("&&")]
                return next(p for p in parts if "train.py" in p)
    raise AssertionError("README.md has no fenced block with a train.py command")


def _copy_repo(dst) -> str:
    ignore = shutil.ignore_patterns(".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", "mutants")
    shutil.copytree(sr.REPO, dst, ignore=ignore)
    return os.fspath(dst)


def test_readme_main_command_as_written(env, tmp_path):
    command = readme_main_command()
    assert "--workdir runs/" in command or "--workdir=runs/" in command, command  # relative, as users type it
    repo = _copy_repo(tmp_path / "repo")
    user_env = {k: v for k, v in env.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}  # one CPU device, as a user has
    user_env["TFDS_DATA_DIR"] = env["DATA_DIR"]  # TFDS's default data_dir, here inside the test's temp folder
    p = subprocess.run(["bash", "-c", command], cwd=repo, env=user_env, capture_output=True, text=True, timeout=1500)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    workdir = os.path.join(repo, re.search(r"--workdir[= ](\S+)", command).group(1))
    assert sr.committed_steps(workdir), out[-2000:]
    assert sr.partial_dirs(workdir) == [], out[-2000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    assert evals and evals[-1]["top1"] >= 0.90, evals
    print(f"README command: validation top-1 {100 * evals[-1]['top1']:.2f}% at step {evals[-1]['step']}")
    assert evals[-1]["step"] == sr.committed_steps(workdir)[-1]


# ----------------------------------------------------------------------------- typed paths


def test_relative_home_trailing_slash_and_symlinked_paths(env, tmp_path):
    """train.py, eval, plot and the research API from a directory that is not the repo,
    with ``~``, trailing slashes, relative paths and symlinks; all the same run."""
    home, cwd = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    cwd.mkdir()
    os.symlink(env["DATA_DIR"], cwd / "tfds_link")  # relative + symlinked data_dir
    user_env = {**env, "HOME": os.fspath(home)}
    base = [a if a != "configs/digits.py" else os.path.join(sr.REPO, "configs", "digits.py") for a in sr.TINY]
    train = [sys.executable, os.path.join(sr.REPO, "train.py"), *base,
             "--config.data.data_dir=tfds_link/", "--workdir=~/runs/tiny/"]
    p = subprocess.run(train, cwd=cwd, env=user_env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    run_dir = home / "runs" / "tiny"
    assert sr.committed_steps(run_dir)[-1] == sr.TOTAL and sr.partial_dirs(run_dir) == []
    os.symlink(run_dir, cwd / "linked_run")

    def ok(*cmd: str) -> str:
        q = subprocess.run([sys.executable, *cmd], cwd=cwd, env=user_env, capture_output=True, text=True, timeout=900)
        assert q.returncode == 0, (q.stdout + q.stderr)[-4000:]
        return q.stdout

    assert "top1" in ok("-m", "dmformer_jax.eval", "--workdir", "linked_run/")
    ok("-m", "dmformer_jax.plot", "linked_run/", "--out", "curves.png")
    assert (cwd / "curves.png").stat().st_size > 0
    ok("-c", "import dmformer_jax as d, numpy as np, jax\n"
             "d.export_checkpoint('linked_run/', 'exported')\n"
             "d.export_checkpoint('~/runs/tiny', 'model.safetensors')\n"
             "a = d.load('~/runs/tiny/')[1]; b = d.load('exported')[1]; c = d.load('model.safetensors')[1]\n"
             "for x in (b, c):\n"
             "    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, x)\n")
    assert (cwd / "exported").is_dir() and (cwd / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- failed save


@contextlib.contextmanager
def unwritable(path):
    """Makes folder ``path`` refuse new entries and renames, even for root (chattr +i)."""
    path = os.fspath(path)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", path], check=True)
        undo = ["chattr", "-i", path]
    else:
        os.chmod(path, 0o555)
        undo = None
    try:
        probe = os.path.join(path, "probe")
        with contextlib.suppress(OSError):
            os.mkdir(probe)
            os.rmdir(probe)
            raise AssertionError(f"could not make {path} unwritable for this test")
        yield
    finally:
        subprocess.run(undo, check=True) if undo else os.chmod(path, 0o755)


def _files(step_dir) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), step_dir)] = f.read()
    return out


def test_checkpoint_folder_made_unwritable_mid_run(env, tmp_path):
    workdir = tmp_path / "run"
    ckpt_flags = ["--config.checkpoint_every_steps=1", f"--config.keep_checkpoints={sr.TOTAL}"]
    t = sr.Training(env, workdir, *ckpt_flags)
    reader = threading.Thread(target=lambda: [t.lines.append(ln) for ln in t.proc.stdout], daemon=True)
    reader.start()
    deadline = time.time() + 600
    while not sr.committed_steps(workdir):  # freeze the run right after its first finished save
        assert t.proc.poll() is None and time.time() < deadline, t.text[-3000:]
        time.sleep(0.005)
    t.signal(signal.SIGSTOP)
    before = {s: _files(workdir / "checkpoints" / str(s)) for s in sr.committed_steps(workdir)}
    assert max(before) < sr.TOTAL, before
    with unwritable(workdir / "checkpoints"):
        t.signal(signal.SIGCONT)
        t0 = time.time()
        rc = t.proc.wait(timeout=240)
        took = time.time() - t0
        reader.join(timeout=60)
    out = t.text
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert rc == 3 and len(errors) == 1, out[-4000:]
    m = re.match(r"error: checkpoint step (\d+) could not be written to (\S+): \w+", errors[0])
    assert m and m.group(2) == os.fspath(workdir / "checkpoints" / m.group(1)), errors
    failed = int(m.group(1))
    print(f"unwritable checkpoints: {errors[0]!r}; exit {rc} {took:.1f} s after the folder became unwritable")
    assert failed > max(before) and took < 120, (failed, took)  # stopped at once, no 300 s thread wait
    assert f"step {sr.TOTAL}/{sr.TOTAL}" not in out  # the run did not train on unsaved
    after = sr.committed_steps(workdir)
    assert after == sorted(before), (after, before)
    for step, files in before.items():  # finished checkpoints untouched (their manifest may be added)
        now = _files(workdir / "checkpoints" / str(step))
        assert {k: v for k, v in now.items() if k != "dmformer_manifest.json"} == files

    # Writable again: the rerun resumes from the newest finished step and completes.
    out = sr.run_ok(env, workdir, *ckpt_flags)
    assert f"resuming from checkpoint step {max(before)}" in out
    assert sr.committed_steps(workdir)[-1] == sr.TOTAL and sr.partial_dirs(workdir) == []
