"""Checksums of a finished training step: ``<step>/dmformer_manifest.json``.

Once Orbax has committed a step, process 0 writes the SHA-256 and size of every file of
the step. Readers verify it first: a flipped bit that still leaves the arrays readable
makes the step unreadable instead of silently changing a weight. Steps without a
manifest (written before manifests existed, or killed between commit and manifest) are
read unverified.
"""

from __future__ import annotations

import hashlib
import json
import os

from etils import epath

from dmformer_jax.errors import first_line
from dmformer_jax.checkpoint.layout import MANIFEST
from dmformer_jax.paths import is_url

MANIFEST_FORMAT = "dmformer_jax.manifest/1"
_HASH_CHUNK = 1 << 22


def _files(step_dir: epath.Path) -> list[str]:
    """Relative paths of every file under ``step_dir`` except the manifest, sorted."""
    root = os.fspath(step_dir)
    out = []
    for parent, _, names in _walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(parent, name), root)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def _walk(root: str):
    """``os.walk`` for local folders, TF's gfile walk for URLs (gs:// ...)."""
    if is_url(root):
        import tensorflow as tf  # late: slow to import, and only needed for remote workdirs

        return tf.io.gfile.walk(root)
    return os.walk(root)


def _sha256(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(step_dir: epath.Path) -> None:
    """Writes ``step_dir/dmformer_manifest.json``: the SHA-256 and size of every file."""
    files = {rel: {"sha256": _sha256(step_dir / rel), "bytes": (step_dir / rel).stat().length}
             for rel in _files(step_dir)}
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))
    tmp.rename(step_dir / MANIFEST)  # a reader never sees half a manifest


def verify_manifest(step_dir: epath.Path) -> str | None:
    """None when ``step_dir`` matches its manifest (or has none); else what differs."""
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"its checksum manifest {MANIFEST} is unreadable ({first_line(e)})"
    present = set(_files(step_dir))
    for rel, want in sorted(files.items()):
        if rel not in present:
            return f"{rel} is missing (listed in {MANIFEST})"
        if _sha256(step_dir / rel) != want["sha256"]:
            return f"{rel} does not match its SHA-256 in {MANIFEST} (changed since it was saved)"
    extra = sorted(present - set(files))
    if extra:
        return f"{extra[0]} is not in {MANIFEST} (added since it was saved)"
    return None


