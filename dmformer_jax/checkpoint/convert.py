"""Flax <-> PyTorch weight conversion for DMFormer (NumPy and flax.traverse_util; no torch import).

Key mapping: the Flax path ``params/<m1>/<m2>/<leaf>`` becomes the PyTorch key
``<m1>.<m2>.<name>`` (`dmformer_jax.torch_model` mirrors the Flax module names), e.g.
``params/backbone/stem/conv1/kernel`` is ``backbone.stem.conv1.weight`` and
``params/head/fc/kernel`` is ``head.fc.weight``:

=================  ==========================  ======================================
Flax leaf          PyTorch name                value
=================  ==========================  ======================================
kernel (4-D HWIO)  weight (OIHW)               ``transpose(3, 2, 0, 1)``
kernel (2-D)       weight (out, in)            ``transpose``
scale              weight                      as is (LayerNorm, BatchNorm)
bias / gamma       bias / gamma                as is
batch_stats mean   running_mean                as is
batch_stats var    running_var                 as is
—                  num_batches_tracked         0 (PyTorch bookkeeping; ignored back)
=================  ==========================  ======================================

Both directions check names and shapes against a target and raise `ConversionError`
listing every missing, unexpected and shape-mismatched key, so a wrong variant never
loads silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.core
import numpy as np
from flax import traverse_util

__all__ = ["ConversionError", "flax_to_torch_state_dict", "torch_state_dict_to_flax"]

_PARAM_NAMES = {"scale": "weight", "bias": "bias", "gamma": "gamma"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}
_TORCH_ONLY = "num_batches_tracked"


class ConversionError(ValueError):
    """Raised when a state dict and a model disagree on names or shapes."""


def _flatten(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _flax_to_torch_entry(collection: str, path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
    """Maps one Flax leaf ``(collection, path)`` to its PyTorch key and array."""
    module, leaf = ".".join(path[:-1]), path[-1]
    if collection == "batch_stats":
        if leaf not in _STAT_NAMES:
            raise ConversionError(f"unknown batch_stats leaf {'/'.join(path)!r}")
        return f"{module}.{_STAT_NAMES[leaf]}", value
    if leaf == "kernel":
        if value.ndim == 4:  # HWIO -> OIHW
            return f"{module}.weight", np.transpose(value, (3, 2, 0, 1))
        if value.ndim == 2:  # (in, out) -> (out, in)
            return f"{module}.weight", value.T
        raise ConversionError(f"kernel {'/'.join(path)!r} has unsupported shape {value.shape}")
    if leaf not in _PARAM_NAMES:
        raise ConversionError(f"unknown parameter leaf {'/'.join(path)!r}")
    return f"{module}.{_PARAM_NAMES[leaf]}", value


def _check(converted: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raises `ConversionError` naming missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = sorted(
        f"{k}: got {tuple(np.shape(converted[k]))}, expected {tuple(expected[k])}"
        for k in set(converted) & set(expected)
        if tuple(np.shape(converted[k])) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch in {len(mismatched)} key(s): {'; '.join(mismatched)}")
    if problems:
        raise ConversionError(
            f"{what}: " + " | ".join(problems)
            + " (is the state dict for the same variant, num_classes and DMA knobs?)"
        )


def flax_to_torch_state_dict(
    variables: Mapping[str, Any], like: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Flax ``{'params': ..., 'batch_stats': ...}`` -> PyTorch-style state dict of NumPy arrays.

    Args:
      variables: the DMFormer Flax variables (arrays of any kind convertible by
        ``np.asarray``; bfloat16 leaves are converted to float32).
      like: optional target state dict (e.g. ``torch_model.state_dict()``; values need
        only a ``.shape``). When given, names and shapes are checked against it.

    Returns:
      ``{torch_key: np.ndarray}``, ready for
      ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.

    Raises:
      ConversionError: unknown leaves, or (with ``like``) missing/unexpected/
        mis-shaped keys, all listed by name.
    """
    state: dict[str, np.ndarray] = {}
    bn_modules = set()
    for collection in ("params", "batch_stats"):
        for path, value in _flatten(variables.get(collection, {})).items():
            array = np.asarray(value)
            if array.dtype.kind == "V" or str(array.dtype) == "bfloat16":
                array = array.astype(np.float32)
            key, converted = _flax_to_torch_entry(collection, path, array)
            state[key] = np.ascontiguousarray(converted)
            if collection == "batch_stats":
                bn_modules.add(".".join(path[:-1]))
    for module in sorted(bn_modules):
        state[f"{module}.{_TORCH_ONLY}"] = np.zeros((), np.int64)
    unknown = sorted(set(variables) - {"params", "batch_stats"})
    if unknown:
        raise ConversionError(f"unexpected variable collection(s) {unknown}; expected params, batch_stats")
    if like is not None:
        _check(state, {k: tuple(v.shape) for k, v in like.items()}, "Flax -> PyTorch")
    return state


def torch_state_dict_to_flax(state_dict: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
    """PyTorch state dict -> Flax variables shaped like ``like``.

    Args:
      state_dict: ``{key: tensor or array}`` (torch tensors are read through
        ``.detach().cpu().numpy()`` if present, so torch need not be imported here).
      like: Flax variables of the target model (e.g. from ``model.init`` or
        ``jax.eval_shape``); gives the names, shapes and dtypes.

    Returns:
      A nested dict ``{'params': ..., 'batch_stats': ...}`` of NumPy arrays in
      ``like``'s dtypes.

    Raises:
      ConversionError: listing every missing, unexpected or mis-shaped key.
    """
    arrays = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arrays[key] = np.asarray(value)

    # Where each Flax leaf comes from, with the inverse transform.
    sources: dict[str, tuple[str, tuple[str, ...], Any]] = {}
    expected_torch_shapes: dict[str, tuple[int, ...]] = {}
    for collection in ("params", "batch_stats"):
        for path, value in _flatten(like.get(collection, {})).items():
            shape = tuple(np.shape(value))
            key, converted = _flax_to_torch_entry(collection, path, np.empty(shape, np.float32))
            sources[key] = (collection, path, getattr(value, "dtype", np.float32))
            expected_torch_shapes[key] = converted.shape
    provided = {k: v for k, v in arrays.items() if not k.endswith("." + _TORCH_ONLY)}
    _check(provided, expected_torch_shapes, "PyTorch -> Flax")

    flat = {}
    for key, (collection, path, dtype) in sources.items():
        value = arrays[key]
        if path[-1] == "kernel":
            value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value.T
        flat[(collection,) + path] = np.ascontiguousarray(value).astype(dtype)
    return traverse_util.unflatten_dict(flat)
