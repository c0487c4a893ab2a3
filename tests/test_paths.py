"""User-typed paths: relative, ``~``, trailing slashes, symlinks and URLs (fast, in-process).

The end-to-end check (train.py, eval, plot and the research API from another
directory) is tests/test_newcomer_path.py.
"""

from __future__ import annotations

import os

import pytest

from configs.common import get_base_config
from dmformer_jax import paths
from dmformer_jax.errors import DataError
from dmformer_jax.train import loop


@pytest.fixture
def at(tmp_path, monkeypatch):
    """cwd = tmp/cwd, HOME = tmp/home."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", os.fspath(tmp_path / "home"))
    return tmp_path


def test_resolve(at):
    cwd, home = os.fspath(at / "cwd"), os.fspath(at / "home")
    assert paths.resolve("runs/digits/") == os.path.join(cwd, "runs", "digits")
    assert paths.resolve("./a/../b") == os.path.join(cwd, "b")
    assert paths.resolve("~/runs/x/") == os.path.join(home, "runs", "x")
    assert paths.resolve(at / "cwd") == cwd  # PathLike
    os.symlink(at / "home", at / "cwd" / "link")
    assert paths.resolve("link/") == os.path.join(cwd, "link")  # the link the user named, kept
    for url in ("gs://bucket/run/", "s3://b/x", "ram://tmp/y"):
        assert paths.resolve(url) == url
    assert paths.resolve_optional("") is None and paths.resolve_optional(None) is None


def test_config_paths_become_absolute(at):
    config = get_base_config()
    config.init_from = "~/pretrained/"
    config.data.data_dir = "tfds"
    config.data.manual_dir = None
    loop.resolve_config_paths(config)
    assert config.init_from == os.path.join(at / "home", "pretrained")
    assert config.data.data_dir == os.path.join(at / "cwd", "tfds")
    assert config.data.manual_dir is None
    config.data.data_dir = "gs://bucket/tensorflow_datasets"
    loop.resolve_config_paths(config)
    assert config.data.data_dir == "gs://bucket/tensorflow_datasets"


def _imagenet_config(data_dir, manual_dir=None):
    config = get_base_config()
    config.data.name = "imagenet2012"
    config.data.data_dir = data_dir
    config.data.manual_dir = manual_dir
    return config


def test_manual_dir_creates_a_missing_data_dir(at):
    import dmformer_jax.data as data

    (at / "manual").mkdir()
    with pytest.raises(DataError, match="lacks ILSVRC2012_img_train.tar"):  # empty manual_dir: next check
        data.dataset_info(_imagenet_config("new/tfds", manual_dir=os.fspath(at / "manual")))
    assert (at / "cwd" / "new" / "tfds").is_dir()


def test_missing_data_dir_without_manual_dir_is_an_error_and_not_created(at):
    import dmformer_jax.data as data

    with pytest.raises(DataError, match="data_dir .* does not exist.*--config.data.manual_dir"):
        data.dataset_info(_imagenet_config("new/tfds"))
    with pytest.raises(DataError, match="manual_dir .*no_manual' does not exist"):
        data.dataset_info(_imagenet_config("new/tfds", manual_dir="no_manual"))
    assert not (at / "cwd" / "new").exists()
