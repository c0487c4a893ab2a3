"""An independent NumPy float64 implementation of the spec's DMFormer equations.

Written from the equations of ``docs/architecture.md`` alone: it shares no code with
`dmformer_jax` and reads only the parameter pytree (plain nested dicts of arrays).
Convolutions are explicit loops over kernel taps on zero-padded inputs (NHWC).
"""

from __future__ import annotations

import math

import numpy as np


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def conv2d(x, kernel, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    """``x`` (B,H,W,Cin), ``kernel`` (kh,kw,Cin/groups,Cout) -> (B,Ho,Wo,Cout)."""
    x, kernel = f64(x), f64(kernel)
    b, h, w, cin = x.shape
    kh, kw, cin_g, cout = kernel.shape
    assert cin_g * groups == cin
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((b, ho, wo, cout))
    cout_g = cout // groups
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dilation: i * dilation + stride * (ho - 1) + 1: stride,
                       j * dilation: j * dilation + stride * (wo - 1) + 1: stride, :]
            for g in range(groups):
                pin = patch[..., g * cin_g:(g + 1) * cin_g]
                kern = kernel[i, j, :, g * cout_g:(g + 1) * cout_g]
                out[..., g * cout_g:(g + 1) * cout_g] += pin @ kern
    if bias is not None:
        out += f64(bias)
    return out


def depthwise(x, kernel, bias, dilation):
    """Depth-wise conv keeping H×W: ``kernel`` (k,k,1,C)."""
    k = kernel.shape[0]
    c = x.shape[-1]
    return conv2d(x, kernel, bias, padding=dilation * (k - 1) // 2, dilation=dilation, groups=c)


def layer_norm(x, p, eps=1e-6):
    x = f64(x)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * f64(p["scale"]) + f64(p["bias"])


def batch_norm_eval(x, p, stats, eps=1e-5):
    return (f64(x) - f64(stats["mean"])) / np.sqrt(f64(stats["var"]) + eps) * f64(p["scale"]) + f64(p["bias"])


def batch_norm_train(x, p, eps=1e-5):
    """Normalises with the batch's own (biased) statistics; returns (y, mean, unbiased var)."""
    x = f64(x)
    mu = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    y = (x - mu) / np.sqrt(var + eps) * f64(p["scale"]) + f64(p["bias"])
    return y, mu, var


def dense(x, p):
    return f64(x) @ f64(p["kernel"]) + f64(p["bias"])


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def dma(x, p, stats, *, expand_ratio=3, kernel_sizes=(3, 5, 7), dilations=(1, 2, 3),
        fusion="split", inner_residual=True):
    """The spec's DMA equations, BatchNorm in eval mode. ``x`` (B,H,W,C)."""
    x = f64(x)
    c = x.shape[-1]
    e = conv2d(x, p["expand"]["kernel"], p["expand"]["bias"])
    assert e.shape[-1] == expand_ratio * c
    n = len(kernel_sizes)
    if fusion == "split":
        groups = np.split(e, n, axis=-1)
        outs = [depthwise(g, p[f"branch_{i}"]["kernel"], p[f"branch_{i}"]["bias"], d)
                for i, (g, d) in enumerate(zip(groups, dilations))]
        f = np.concatenate(outs, axis=-1)
    else:
        f = sum(depthwise(e, p[f"branch_{i}"]["kernel"], p[f"branch_{i}"]["bias"], d)
                for i, d in enumerate(dilations))
    f = relu(batch_norm_eval(f, p["bn"], stats["bn"]))
    reduced = conv2d(f, p["reduce"]["kernel"], p["reduce"]["bias"])
    x_prime = x + reduced if inner_residual else reduced
    a = sigmoid(dense(relu(dense(x.mean(axis=(1, 2)), p["gate_fc1"])), p["gate_fc2"]))
    value = conv2d(x_prime, p["value"]["kernel"], p["value"]["bias"])
    return a[:, None, None, :] * value


def block(x, p, stats, **dma_kw):
    y = dma(layer_norm(x, p["norm1"]), p["token_mixer"], stats["token_mixer"], **dma_kw)
    x = x + f64(p["layer_scale1"]["gamma"]) * y
    h = gelu(dense(layer_norm(x, p["norm2"]), p["mlp"]["fc1"]))
    y = dense(h, p["mlp"]["fc2"])
    return x + f64(p["layer_scale2"]["gamma"]) * y


def stem(x, p, stats):
    x = conv2d(x, p["conv1"]["kernel"], stride=2, padding=3)
    x = relu(batch_norm_eval(x, p["bn1"], stats["bn1"]))
    x = conv2d(x, p["conv2"]["kernel"], padding=1)
    x = relu(batch_norm_eval(x, p["bn2"], stats["bn2"]))
    x = conv2d(x, p["conv3"]["kernel"], p["conv3"]["bias"], stride=2)
    return layer_norm(x, p["norm"])


def dmformer(images, params, stats, depths, **dma_kw):
    """Eval-mode forward: returns (logits, [stage features]).

    ``params``/``stats``: the classifier's trees, ``{'backbone': ..., 'head': {'norm', 'fc'}}``.
    """
    head = params["head"]
    params, stats = params["backbone"], stats["backbone"]
    x = stem(f64(images), params["stem"], stats["stem"])
    feats = []
    for s, depth in enumerate(depths):
        if s > 0:
            d = params[f"downsample_{s}"]
            x = layer_norm(conv2d(x, d["conv"]["kernel"], d["conv"]["bias"], stride=2, padding=1), d["norm"])
        for j in range(depth):
            name = f"stage_{s}_block_{j}"
            x = block(x, params[name], stats[name], **dma_kw)
        feats.append(x)
    pooled = layer_norm(x.mean(axis=(1, 2)), head["norm"])
    return dense(pooled, head["fc"]), feats
