"""Configs: every recipe loads, overrides work, bad flags fail with one line, exit 2."""

from __future__ import annotations

import importlib

import ml_collections
import pytest

from dmformer_jax.errors import ConfigError
from dmformer_jax.train import cli
from dmformer_jax.train.loop import validate_config

RECIPES = ["configs/dmformer_t.py", "configs/dmformer_s.py", "configs/dmformer_l.py", "configs/digits.py"]


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_loads_with_docstring_command(path):
    module = importlib.import_module(path[:-3].replace("/", "."))
    config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    # The launch command is documented in the module docstring.
    assert f"--config {path}" in module.__doc__
    # Same schema as the base: no recipe invents or drops a field.
    from configs.common import get_base_config

    def keys(c, prefix=""):
        out = set()
        for k, v in c.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else {prefix + k}
        return out

    assert keys(config) == keys(get_base_config())


def test_recipes_use_their_variant():
    from configs import dmformer_l, dmformer_s, dmformer_t

    assert [m.get_config().model.name for m in (dmformer_t, dmformer_s, dmformer_l)] == [
        "dmformer_t", "dmformer_s", "dmformer_l",
    ]
    s = dmformer_s.get_config()
    # FOUND values of the paper's recipe.
    assert (s.num_epochs, s.batch_size, s.optim.base_lr) == (300, 1024, 1e-3)


def test_overrides_change_typed_fields():
    args = cli.parse_args([
        "train.py", "--config", "configs/dmformer_s.py", "--workdir", "/tmp/x",
        "--config.batch_size=256", "--config.optim.grad_clip_norm=1.0",
        "--config.model.drop_path_rate=0.2", "--config.data.data_dir=gs://b/tfds",
        "--config.model.widths=(16,32,48,64)",
    ])
    c = args.config
    assert c.batch_size == 256 and isinstance(c.batch_size, int)
    assert c.optim.grad_clip_norm == 1.0
    assert c.model.drop_path_rate == 0.2
    assert c.data.data_dir == "gs://b/tfds"
    assert tuple(c.model.widths) == (16, 32, 48, 64)
    assert args.workdir == "/tmp/x"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--config", "configs/dmformer_s.py", "--config.foo=1"], "unknown config key 'foo'"),
        (["--config", "configs/dmformer_s.py", "--config.optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["--config", "configs/dmformer_s.py", "--config.batch_size=abc"], "batch_size=abc"),
        (["--config", "configs/nope.py"], "cannot load the config file"),
        (["--config", "configs/dmformer_s.py", "--bogus=1"], "bogus"),
    ],
)
def test_bad_flags_are_one_line_config_errors(argv, needle):
    with pytest.raises(ConfigError) as e:
        cli.parse_args(["train.py", *argv, "--workdir", "/tmp/x"])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_main_exit_code_2_and_workdir_untouched(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli.main(["train.py", "--config", "configs/digits.py", f"--workdir={workdir}", "--config.batch_sz=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: unknown config key 'batch_sz'")
    assert not workdir.exists()


def test_batch_not_divisible_by_devices_names_a_fix():
    from configs.common import get_base_config

    c = get_base_config()
    c.batch_size = 10
    with pytest.raises(ConfigError, match=r"batch_size=10 is not divisible by the 8 devices.*--config.batch_size=16"):
        validate_config(c, device_count=8, process_count=1)
    c.batch_size = 16
    c.eval_batch_size = 12
    with pytest.raises(ConfigError, match="eval_batch_size=12"):
        validate_config(c, device_count=8, process_count=2)
    c.eval_batch_size = None
    validate_config(c, device_count=8, process_count=2)  # eval batch defaults to batch_size


def test_unknown_model_is_a_config_error():
    from configs.common import get_base_config

    from dmformer_jax.train.state import build_model

    c = get_base_config()
    c.model.name = "dmformer_xxl"
    with pytest.raises(ConfigError, match="unknown model 'dmformer_xxl'.*dmformer_s"):
        build_model(c, 10)


def test_every_model_field_is_a_config_field_and_reaches_the_model():
    import jax.numpy as jnp

    from dmformer_jax.models.registry import OVERRIDABLE
    from dmformer_jax.train import state as state_lib

    # num_classes comes from the dataset, never from config.model.
    assert set(OVERRIDABLE) - {"num_classes"} <= set(cli.parse_args(
        ["train.py", "--config", "configs/digits.py", "--workdir", "/tmp/x"]).config.model.keys())
    flags = {
        "depths": "(1,1,2,1)", "widths": "(16,32,48,64)", "drop_path_rate": "0.3",
        "layer_scale_init": "0.5", "mlp_ratio": "2.0", "stem_hidden_width": "12", "expand_ratio": "2",
        "kernel_sizes": "(3,5)", "dilations": "(1,3)", "fusion": "sum", "gate_reduction": "2",
        "inner_residual": "False", "depthwise_impl": "xla", "conv_impl": "im2col",
        "param_dtype": "bfloat16", "dtype": "bfloat16",
    }
    assert set(flags) == set(OVERRIDABLE) - {"num_classes"}
    args = cli.parse_args(["train.py", "--config", "configs/digits.py", "--workdir", "/tmp/x",
                           *(f"--config.model.{k}={v}" for k, v in flags.items())])
    model = state_lib.build_model(args.config, 7)
    want = dict(depths=(1, 1, 2, 1), widths=(16, 32, 48, 64), drop_path_rate=0.3, layer_scale_init=0.5,
                mlp_ratio=2.0, stem_hidden_width=12, expand_ratio=2, kernel_sizes=(3, 5), dilations=(1, 3),
                fusion="sum", gate_reduction=2, inner_residual=False, depthwise_impl="xla", conv_impl="im2col",
                param_dtype=jnp.bfloat16, dtype=jnp.bfloat16, num_classes=7)
    assert {k: getattr(model, k) for k in want} == want


def test_unset_model_fields_keep_the_variant_and_bad_ones_are_one_line_errors():
    from dmformer_jax.models import VARIANTS
    from dmformer_jax.train import state as state_lib

    config = cli.parse_args(["train.py", "--config", "configs/dmformer_l.py", "--workdir", "/tmp/x"]).config
    model = state_lib.build_model(config, 10)
    v = VARIANTS["dmformer_l"]
    assert (model.depths, model.widths, model.drop_path_rate, model.layer_scale_init) == (
        v.depths, v.widths, v.drop_path_rate, v.layer_scale_init)
    config.model.fusion = "concat"
    config.model.param_dtype = "float16"
    with pytest.raises(ConfigError, match="param_dtype='float16'") as e:
        state_lib.build_model(config, 10)
    assert "\n" not in str(e.value)
