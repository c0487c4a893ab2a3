"""Key remap for files written before the backbone/heads split (layout v1).

In the style of timm's ``checkpoint_filter_fn``: pure functions from the old names to
today's, applied wherever checkpoints and exports are read, so files written by older
code keep loading (tests/fixtures/legacy_v1).

==============================  =====================================
v1 (flat `DMFormer`)            today (`Backbone` + `ClassifierHead`)
==============================  =====================================
``stem/...``                    ``backbone/stem/...``
``stage_i_block_j/...``         ``backbone/stage_i_block_j/...``
``downsample_i/...``            ``backbone/downsample_i/...``
``head_norm/...``               ``head/norm/...``
``head/{kernel,bias}``          ``head/fc/{kernel,bias}``
==============================  =====================================

PyTorch state-dict names follow the same table with ``.`` for ``/``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax

_BACKBONE_MODULE = re.compile(r"^(stem|downsample_\d+|stage_\d+_block_\d+)$")
_V1_HEAD = {"head_norm": ("head", "norm"), "head": ("head", "fc")}


def _has_stem(node: Any) -> bool:
    return isinstance(node, Mapping) and "stem" in node and "backbone" not in node


def _is_v2_module_dict(node: Any) -> bool:
    return isinstance(node, Mapping) and "backbone" in node and "stem" not in node


def _last_key(path: tuple) -> Any:
    if not path:
        return None
    entry = path[-1]
    return getattr(entry, "key", getattr(entry, "name", None))


def _is_v1(path: tuple, node: Any) -> bool:
    # A dict holding ``stem`` is a v1 model-level dict unless it already sits under
    # ``backbone`` (today's Backbone batch_stats look exactly like v1 batch_stats).
    return _has_stem(node) and _last_key(path) != "backbone"


def remap_v1_module_dict(node: Mapping[str, Any]) -> dict[str, Any]:
    """One v1 model-level dict (a ``params`` or ``batch_stats`` tree, or an optimizer
    moment shaped like one) -> today's layout; leaves are kept as they are.

    Raises:
      ValueError: a key that is in neither layout (not a DMFormer tree).
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if _BACKBONE_MODULE.match(key):
            out.setdefault("backbone", {})[key] = value
        elif key in _V1_HEAD:
            outer, inner = _V1_HEAD[key]
            out.setdefault(outer, {})[inner] = value
        else:
            raise ValueError(f"unknown key {key!r} in a v1 DMFormer tree; expected stem, stage_*, downsample_*, head*")
    return out


def to_v1_module_dict(node: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `remap_v1_module_dict` (a restore target for v1 checkpoints)."""
    out: dict[str, Any] = dict(node.get("backbone", {}))
    for key, (outer, inner) in _V1_HEAD.items():
        if inner in node.get(outer, {}):
            out[key] = node[outer][inner]
    extra = sorted(set(node) - {"backbone", "head"}) + sorted(set(node.get("head", {})) - {"norm", "fc"})
    if extra:
        raise ValueError(f"keys {extra} have no v1 equivalent; only classifier trees have a v1 layout")
    return out


def remap_v1_tree(tree: Any) -> Any:
    """Any pytree (variables, a `TrainState`, optimizer state) with every v1 model-level
    dict in it rewritten to today's layout; trees already in today's layout come back
    unchanged (so it is safe to apply to every file read)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, n: remap_v1_module_dict(n) if _is_v1(path, n) else n, tree, is_leaf=_has_stem
    )


def to_v1_tree(tree: Any) -> Any:
    """`remap_v1_tree` backwards: today's layout -> v1 (e.g. an abstract restore target)."""
    return jax.tree.map(lambda n: to_v1_module_dict(n) if _is_v2_module_dict(n) else n, tree,
                        is_leaf=_is_v2_module_dict)


def has_v1_layout(tree: Any) -> bool:
    """Whether any model-level dict in ``tree`` uses the v1 layout."""
    found = []
    jax.tree_util.tree_map_with_path(lambda path, n: found.append(_is_v1(path, n)), tree, is_leaf=_has_stem)
    return any(found)


def remap_v1_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A v1 PyTorch-style state dict (``stem.conv1.weight``, ``head_norm.weight``,
    ``head.weight``) -> today's names (``backbone.stem.conv1.weight``, ``head.norm.weight``,
    ``head.fc.weight``). A state dict already in today's layout comes back unchanged.
    """
    if not any(k.startswith("stem.") for k in state_dict):
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        module, _, rest = key.partition(".")
        if _BACKBONE_MODULE.match(module):
            out[f"backbone.{key}"] = value
        elif module in _V1_HEAD:
            out[".".join(_V1_HEAD[module]) + "." + rest] = value
        else:
            raise ValueError(f"unknown key {key!r} in a v1 DMFormer state dict")
    return out
