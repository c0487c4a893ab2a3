"""Counting a model's multiply-accumulates (MACs) from its jaxpr.

The convention is fvcore's/timm's, which the published GMAC figures use: one MAC per
multiply-add in convolutions and matrix products; normalisation, activations,
pooling and elementwise ops are not counted. XLA's cost analysis, which also counts
those, is reported beside it by `xla_flops`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def _conv_macs(eqn) -> int:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    # rhs_spec = (out feature dim, in feature dim, *spatial dims)
    rhs_in = rhs[dn.rhs_spec[1]]
    kernel_spatial = int(np.prod([rhs[d] for d in dn.rhs_spec[2:]]))
    return int(np.prod(out)) * rhs_in * kernel_spatial


def _dot_macs(eqn) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    contraction = int(np.prod([lhs[d] for d in lhs_contract]))
    return int(np.prod(eqn.outvars[0].aval.shape)) * contraction


def _count(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            total += _conv_macs(eqn)
        elif eqn.primitive.name == "dot_general":
            total += _dot_macs(eqn)
        for sub in _subjaxprs(eqn):
            total += _count(sub)
    return total


def _subjaxprs(eqn):
    """Jaxprs nested in an equation (jit, custom_vjp, remat, ...)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            inner = getattr(item, "jaxpr", None)
            if inner is not None:
                yield inner if hasattr(inner, "eqns") else inner.jaxpr


def count_macs(fn: Callable[..., Any], *args: Any) -> int:
    """MACs of one call ``fn(*args)`` (args may be ``jax.ShapeDtypeStruct``)."""
    return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def xla_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of ``fn(*args)`` by XLA's cost analysis of the compiled program."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX returned one dict per device
        analysis = analysis[0]
    return float(analysis["flops"])


def lowered_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of ``fn(*args)`` by XLA's cost analysis of the *lowered* (unoptimised) HLO,
    without compiling; the count `benchmarks/bench_model.py` and `gpu_check.py` use for
    training steps (a ``lax.scan`` body is counted once, so count models built with
    ``depthwise_impl='xla'``). Args may be ``jax.ShapeDtypeStruct``."""
    analysis = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])
