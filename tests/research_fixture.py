"""A small trained-looking checkpoint for the research-API tests, saved on 8 devices.

Built once per test session (cached under pytest's base temp dir) with the project's
own helpers: `TrainState` + `dmformer_jax.checkpoint.save` + the trainer's
`checkpoint_meta`, exactly what ``train.py`` writes. The EMA is made different from
the raw parameters so tests can tell which one `load` returned.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_CLASSES = 10
STEP = 7


def digits_config():
    from configs.digits import get_config

    config = get_config()
    config.optim.ema_decay = 0.9
    return config


def make_checkpoint(workdir: str) -> dict:
    """Saves one checkpoint into ``workdir``; returns its arrays as NumPy (params, ema, stats).

    Uses every device this process has (8 fake CPU devices under tests/conftest.py).
    """
    from dmformer_jax import checkpoint as ckpt
    from dmformer_jax.train import mesh as mesh_lib
    from dmformer_jax.train import state as state_lib
    from dmformer_jax.train.loop import checkpoint_meta

    config = digits_config()
    model = state_lib.build_model(config, NUM_CLASSES)
    mesh = mesh_lib.make_mesh()
    # Shapes from eval_shape, values from NumPy: no init compile (tens of seconds on CPU),
    # and every array, statistics included, is non-trivial.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(s.dtype), shapes["params"])
    stats = jax.tree.map(lambda s: rng.uniform(0.1, 0.5, s.shape).astype(s.dtype), shapes["batch_stats"])
    ema = jax.tree.map(lambda x: x + rng.normal(0, 0.05, x.shape).astype(x.dtype), params)
    variables = {"params": params}
    tx = optax.adamw(1e-3)
    state = state_lib.TrainState(
        step=jnp.asarray(STEP, jnp.int32), params=variables["params"], batch_stats=stats,
        opt_state=tx.init(variables["params"]), ema_params=ema,
        rng=jax.random.key_data(jax.random.key(1)),
    )
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    mngr = ckpt.make_manager(workdir, async_checkpointing=False)
    ckpt.save(mngr, STEP, state, checkpoint_meta(config, NUM_CLASSES, STEP), force=True)
    mngr.wait_until_finished()
    mngr.close()
    return {
        "params": jax.tree.map(np.asarray, state.params),
        "ema_params": jax.tree.map(np.asarray, state.ema_params),
        "batch_stats": jax.tree.map(np.asarray, state.batch_stats),
        "num_devices": len(jax.tree.leaves(state.params)[0].sharding.device_set),
    }


def cached_checkpoint(tmp_path_factory) -> tuple[str, dict]:
    """``(workdir, arrays)``: the session's checkpoint (made on first use)."""
    import pickle

    root = tmp_path_factory.getbasetemp() / "research_pretrained"
    workdir, arrays_file = root / "workdir", root / "arrays.pkl"
    if not arrays_file.exists():
        root.mkdir(exist_ok=True)
        arrays = make_checkpoint(str(workdir))
        arrays_file.write_bytes(pickle.dumps(arrays))
    return str(workdir), pickle.loads(arrays_file.read_bytes())


# ------------------------------------------------------------------ segmentation

SEG_CLASSES = 7  # dmformer_seg_shapes
SEG_STEP = 5


def seg_config(data_dir: str):
    """configs/seg_default.py (Semantic FPN on dmformer_tiny_test, `dmformer_seg_shapes`
    at 64) reading its data from ``data_dir``."""
    from configs.seg_default import get_config

    config = get_config()
    config.data.data_dir = str(data_dir)
    config.optim.ema_decay = 0.9
    return config


def make_seg_checkpoint(workdir: str, data_dir: str) -> dict:
    """Saves one segmentation checkpoint into ``workdir`` as the trainer does (random
    weights, no training, no dataset needed); returns its arrays as NumPy."""
    from dmformer_jax import checkpoint as ckpt
    from dmformer_jax.tasks import SegmentationTask
    from dmformer_jax.train import state as state_lib
    from dmformer_jax.train.loop import checkpoint_meta

    config = seg_config(data_dir)
    info = type("Info", (), {"num_classes": SEG_CLASSES})()
    model = SegmentationTask().build_model(config, info)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    rng = np.random.default_rng(1)
    # Large enough weights that the class maps vary within an image.
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes["params"])
    stats = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes["batch_stats"])
    ema = jax.tree.map(lambda x: x + rng.normal(0, 0.05, x.shape).astype(x.dtype), params)
    # Stateless SGD and one device: Orbax saves each array with its own small program,
    # so fewer arrays and devices keep this fixture cheap (`load` never reads opt_state).
    state = state_lib.TrainState(
        step=jnp.asarray(SEG_STEP, jnp.int32), params=params, batch_stats=stats,
        opt_state=optax.sgd(1e-3).init(params), ema_params=ema, rng=jax.random.key_data(jax.random.key(1)),
    )
    state = jax.device_put(state, jax.devices()[0])
    mngr = ckpt.make_manager(workdir, async_checkpointing=False)
    ckpt.save(mngr, SEG_STEP, state, checkpoint_meta(config, SEG_CLASSES, SEG_STEP, model), force=True)
    mngr.wait_until_finished()
    mngr.close()
    return {"params": jax.tree.map(np.asarray, state.params), "ema_params": jax.tree.map(np.asarray, ema),
            "batch_stats": jax.tree.map(np.asarray, stats)}
