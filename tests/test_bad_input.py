"""Every mistake a user can make on the command line of the real ``train.py``.

Each case runs train.py in a subprocess and must end with exactly one ``error: ...``
line on stderr that names the problem and the fix, exit status 2, no traceback, and
the workdir untouched: a fresh workdir path is not even created; an existing one
keeps every file with the same size and mtime. The cases run a few at a time (each is
a fresh interpreter importing JAX/TF; only the checkpoint cases get as far as building
the model, and none compiles a train step); with ``-k`` only the selected cases run.
The two ADE20K cases prepare the dataset from a tiny broken archive (written by
tests/test_seg_data.py's `write_archive`) on the first use, as a user's first run does.

Unit-level checks of the same errors (parse_args, validate_config) are in
tests/test_config.py; this file checks what the user actually sees.
"""

from __future__ import annotations

import concurrent.futures
import sys

import pytest

import subprocess_runs as sr  # noqa: E402  (tests/ is on sys.path under pytest)

pytestmark = pytest.mark.slow


def _write_checkpoint(workdir, *overrides: str, num_classes: int = 10, step: int = 1) -> None:
    """A real Orbax checkpoint of the TINY run with ``overrides`` (zeros as values),
    written in-process from the abstract train state: no compilation needed."""
    import jax
    import numpy as np

    from dmformer_jax import checkpoint as ckpt
    from dmformer_jax.train import cli, loop, mesh as mesh_lib, optim, state as state_lib

    config = cli.parse_args(["train.py", *sr.TINY, *overrides, "--workdir", str(workdir)]).config
    model = state_lib.build_model(config, num_classes)
    tx, _ = optim.make_optimizer(config, optim.plan_steps(config, 1497))
    abstract = state_lib.abstract_train_state(
        model, tx, image_size=int(config.data.image_size), seed=0, use_ema=True, mesh=mesh_lib.make_mesh()
    )
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    mngr = ckpt.make_manager(str(workdir), async_checkpointing=False)
    ckpt.save(mngr, step, state, loop.checkpoint_meta(config, num_classes, step), force=True)
    mngr.wait_until_finished()
    mngr.close()


def _selected(request) -> set[str]:
    """The case names this session runs (``-k`` selects a few: only those are run)."""
    names = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and "name" in callspec.params:
            names.add(callspec.params["name"])
    return names or set(NAMES)


def _ade_manual_dir(folder, **kwargs):
    """A manual_dir holding a tiny, broken ADEChallengeData2016.zip (test_seg_data's writer)."""
    from test_seg_data import write_archive

    folder.mkdir()
    write_archive(folder, **kwargs)
    return folder


@pytest.fixture(scope="module")
def cases(tmp_path_factory, request):
    """Runs the selected cases (concurrently, 3 at a time); returns {name: (result, workdir, before)}."""
    env = sr.session_env(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("bad_input")
    selected = _selected(request)
    empty = root / "empty_dir"
    empty.mkdir()
    other_variant = root / "other_variant_run"
    if "checkpoint_of_another_variant" in selected:
        _write_checkpoint(other_variant, "--config.model.widths=(8,16,24,40)")
    pretrained_5 = root / "pretrained_5_classes"
    if "init_from_num_classes_mismatch" in selected:
        _write_checkpoint(pretrained_5, num_classes=5)

    def ade(case, **kwargs):  # train.py on the ADE20K recipe's pipeline, prepared from a broken zip
        manual = _ade_manual_dir(root / f"manual_{case}", **kwargs) if case in selected else root / "unused"
        return ["--config", "configs/seg_default.py", "--config.data.name=ade20k", "--config.eval_batch_size=4",
                f"--config.data.manual_dir={manual}", f"--config.data.data_dir={root / f'tfds_{case}'}"]

    imagenet = ["--config.data.name=imagenet2012"]
    specs = {
        # name: (argv after train.py, workdir, expected substrings of the error line)
        "unknown_key": ([*sr.TINY, "--config.optim.lrr=1"], None,
                        ["unknown config key 'optim.lrr'", "configs/common.py"]),
        "wrong_type": ([*sr.TINY, "--config.batch_size=abc"], None,
                       ["config.batch_size", "'abc'", "--config.batch_size="]),
        "indivisible_batch": ([*sr.TINY, "--config.batch_size=18"], None,
                              ["batch_size=18 is not divisible by the 4 devices", "--config.batch_size=20"]),
        "unknown_task": ([*sr.TINY, "--config.task=segmentaton"], None,
                         ["config.task='segmentaton' is not a task", "'classification', 'segmentation'"]),
        "unknown_dataset": ([*sr.TINY, "--config.data.name=imagenet2013", f"--config.data.data_dir={empty}"], None,
                            ["unknown TFDS dataset 'imagenet2013'", "--config.data.name"]),
        "dataset_not_prepared": ([*sr.TINY, *imagenet, f"--config.data.data_dir={empty}"], None,
                                 ["'imagenet2012' is not prepared", "--config.data.manual_dir"]),
        "missing_data_dir": ([*sr.TINY, *imagenet, f"--config.data.data_dir={root / 'no_such_dir'}"], None,
                             ["does not exist", "--config.data.data_dir"]),
        "manual_dir_without_tars": ([*sr.TINY, *imagenet, f"--config.data.data_dir={empty}",
                                     f"--config.data.manual_dir={empty}"], None,
                                    ["lacks ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar"]),
        "missing_config_file": (["--config", "configs/no_such_recipe.py"], None,
                                ["configs/no_such_recipe.py", "--config configs/digits.py"]),
        "checkpoint_of_another_variant": (list(sr.TINY), other_variant,
                                          ["params/", "(8, 16, 24, 40)", "--workdir"]),
    }
    specs["init_from_num_classes_mismatch"] = (
        [*sr.TINY, f"--config.init_from={pretrained_5}"], None,
        ["params/head", "--config.reset_head=True"],
    )
    specs["ade20k_zip_without_annotations"] = (
        ade("ade20k_zip_without_annotations", annotations=False), None,
        ["ADEChallengeData2016.zip has no ADEChallengeData2016/annotations/training/ folder", "download it again"],
    )
    specs["ade20k_mask_of_another_size"] = (
        ade("ade20k_mask_of_another_size", wrong_size="ADE_train_00000002"), None,
        ["annotation ADEChallengeData2016/annotations/training/ADE_train_00000002.png is 41x72 but its image "
         "is 41x71", "download it again"],
    )

    def one(name):
        argv, workdir, needles = specs[name]
        workdir = workdir or root / f"fresh_{name}"
        before = sr.snapshot(workdir)
        cmd = [sys.executable, "train.py", *argv]
        if "--config.data.data_dir" not in " ".join(argv) and argv[:2] != ["--config", "configs/no_such_recipe.py"]:
            cmd.append(f"--config.data.data_dir={env['DATA_DIR']}")
        cmd.append(f"--workdir={workdir}")
        return name, (sr.run(cmd, env, timeout=600), workdir, before, needles)

    assert set(specs) == set(NAMES)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        return dict(pool.map(one, [name for name in specs if name in selected]))


NAMES = [
    "unknown_key", "wrong_type", "indivisible_batch", "unknown_task", "unknown_dataset", "dataset_not_prepared",
    "missing_data_dir", "manual_dir_without_tars", "missing_config_file", "checkpoint_of_another_variant",
    "init_from_num_classes_mismatch", "ade20k_zip_without_annotations", "ade20k_mask_of_another_size",
]


@pytest.mark.parametrize("name", NAMES)
def test_one_line_error_exit_2_workdir_untouched(cases, name):
    result, workdir, before, needles = cases[name]
    err = result.stderr
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    line = errors[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert result.returncode == 2, err[-3000:]
    assert sr.snapshot(workdir) == before, f"{workdir} was changed"
