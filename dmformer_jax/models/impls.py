"""Choosing a computation by name, with a measured default per JAX backend."""

from __future__ import annotations

from typing import Mapping

import jax


def resolve(
    impl: str,
    implementations: Mapping[str, object],
    defaults: Mapping[str, str],
    what: str,
    backend: str | None = None,
) -> str:
    """``'auto'`` -> ``defaults[backend]`` (``'xla'`` for unknown backends); checks names.

    ``backend`` defaults to ``jax.default_backend()``. Raises ``ValueError`` naming the
    valid choices for an unknown ``impl``.
    """
    if impl == "auto":
        return defaults.get(backend or jax.default_backend(), "xla")
    if impl not in implementations:
        raise ValueError(
            f"unknown {what} implementation {impl!r}; choose one of "
            f"{['auto', *sorted(implementations)]}"
        )
    return impl
