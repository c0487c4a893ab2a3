"""User-typed paths, made absolute once at every entry point.

Orbax refuses relative checkpoint paths (it raises in its background save thread), and
a path that depends on the current directory changes meaning between a run and a
later ``--eval_only`` or ``dmformer_jax.load``. Every path a user can type (``--workdir``,
``config.init_from``, ``data.data_dir``, ``data.manual_dir``, the research API's and
the plot/eval commands' arguments) goes through `resolve`.
"""

from __future__ import annotations

import os


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a remote file system (``gs://``, ``s3://``, ``ram://``...)."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> str:
    """``path`` as an absolute local path; URLs are returned unchanged.

    ``~`` is expanded, ``.``/``..`` and trailing slashes are removed; symlinks are
    kept (their target may move between runs; the link is what the user named).

    Examples: ``runs/digits/`` -> ``/home/me/proj/runs/digits``;
    ``~/runs/x`` -> ``/home/me/runs/x``; ``gs://bucket/run/`` -> unchanged.
    """
    path = os.fspath(path)
    if is_url(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def resolve_optional(path: str | os.PathLike | None) -> str | None:
    """`resolve`, passing ``None`` and ``''`` (an unset config field) through as None."""
    return resolve(path) if path else None
