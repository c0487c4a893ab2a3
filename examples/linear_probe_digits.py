"""Linear probe on frozen DMFormer features: the digits task, offline, CPU, ~1 minute.

    python examples/linear_probe_digits.py --checkpoint runs/digits

Loads a trained DMFormer (`dmformer_jax.load`: training workdir or exported file),
extracts the four stage maps of every digits image once (`dmformer_jax.features`),
global-average-pools and concatenates them, then trains a linear classifier with
Optax on those fixed vectors. The backbone is never differentiated: it is frozen by
construction. Prints train/validation accuracy of the probe.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dmformer_jax
from dmformer_jax.data.digits import digits_arrays


def pooled_features(model, variables, images: np.ndarray, mean, std, batch: int = 256) -> np.ndarray:
    """``(N, sum(widths))``: each stage map averaged over space, stages concatenated.

    ``images``: uint8 ``(N, H, W, 3)``. Batches are padded to ``batch`` rows so one
    compiled program serves them all.
    """
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].astype(np.float32) / 255.0
        n = len(chunk)
        chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
        chunk = (chunk - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        maps = dmformer_jax.features(model, variables, chunk)
        pooled = [np.asarray(maps[k]).mean(axis=(1, 2)) for k in sorted(maps)]
        out.append(np.concatenate(pooled, axis=-1)[:n])
    return np.concatenate(out)


def train_probe(x: np.ndarray, y: np.ndarray, num_classes: int, steps: int, lr: float = 0.05):
    """A standardised-input softmax regression fit by full-batch Adam; returns predict(x)."""
    mu, sigma = x.mean(0), x.std(0) + 1e-6
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    tx = optax.adamw(lr, weight_decay=1e-4)
    opt_state = tx.init(params)
    xs = jnp.asarray((x - mu) / sigma)
    labels = jnp.asarray(y)

    def loss_fn(p):
        logits = xs @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)

    def predict(features: np.ndarray) -> np.ndarray:
        return np.asarray(jnp.argmax(((features - mu) / sigma) @ params["w"] + params["b"], -1))

    return predict, float(loss)


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="training workdir or exported DMFormer")
    parser.add_argument("--steps", type=int, default=300, help="probe optimisation steps")
    args = parser.parse_args(argv)

    model, variables = dmformer_jax.load(args.checkpoint)
    meta = dmformer_jax.read_metadata(args.checkpoint)
    data = digits_arrays()  # {'train': (uint8 [N,32,32,3], labels), 'validation': ...}
    feats = {split: pooled_features(model, variables, images, meta["mean"], meta["std"])
             for split, (images, _) in data.items()}
    predict, loss = train_probe(feats["train"], data["train"][1], 10, args.steps)
    result = {split: float(np.mean(predict(feats[split]) == data[split][1])) for split in data}
    print(f"linear probe on frozen {meta['variant']} features ({feats['train'].shape[1]} dims): "
          f"train {100 * result['train']:.1f}% | validation {100 * result['validation']:.1f}% "
          f"(final loss {loss:.3f})")
    return result


if __name__ == "__main__":
    main()
