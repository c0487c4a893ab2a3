"""Where the time goes: per-component forward and forward+backward times, JAX vs PyTorch.

For each part of dmformer_s at batch B, 224×224 (stem; one MetaFormer block per
stage and, inside it, the DMA token mixer and the MLP; the downsampling convs), this
times the forward pass and the forward+backward pass (gradients of a scalar loss
with respect to the input and every parameter; for the stem, only the parameters,
since a training step never differentiates the images), in float32, for:

  - ``jax``: our default on this backend (``depthwise_impl='auto'``, ``conv_impl='auto'``);
  - ``jax_nn_conv``: plain ``nn.Conv`` everywhere (``'xla'`` for both), i.e. what a
    straightforward Flax port runs;
  - ``torch_eager``: the PyTorch twin (`dmformer_jax.torch_model`), 2 threads.

Each contender runs in its own process, one after the other (not interleaved: run it
on a quiet machine). The per-model estimate multiplies each stage's block time by the
stage depth and adds the stem and downsampling. Writes JSON and, with ``--docs``, the
``bench:components_<backend>`` section of a markdown file.

    python benchmarks/profile_components.py --batch 32 --docs docs/benchmarks.md
    python benchmarks/profile_components.py --smoke     # tiny sizes, ~1 minute

``--parts fpn`` does the same for the Semantic FPN segmentation model (default
dmformer_s, batch 2, 512×512, 150 classes): the backbone (with its output norms), the
FPN neck on maps of the backbone's shapes, the FPN head (scale heads + classifier) on
maps of the neck's shapes (the Flax neck is bypassed with ``nn.intercept_methods``,
the PyTorch one replaced by ``nn.Identity``, so the real head modules run), and the
loss (logits resized to the crop, cross-entropy, ignore 255). Their sum estimates the
training step without the optimizer update. Section ``bench:components_fpn_<backend>``.

    python benchmarks/profile_components.py --parts fpn --docs docs/benchmarks.md
    python benchmarks/profile_components.py --parts fpn --smoke
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTENDERS = ("jax", "jax_nn_conv", "torch_eager")
SEG_PARTS = ("backbone", "fpn.neck", "fpn.head", "loss")
SEG_CLASSES = 150


def stage_shapes(model_name: str, res: int):
    """``[(stage, H, C, depth)]`` for the variant at input size ``res``."""
    from dmformer_jax.models.registry import get_variant

    v = get_variant(model_name)
    return [(i, res // (4 * 2**i), w, d) for i, (d, w) in enumerate(zip(v.depths, v.widths))]


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up (and, for JAX, the first dispatch after compiling)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _jax_time_fn(fn, params, x, reps: int, input_grad: bool = True) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of ``fn(params, x)``; the backward is the
    gradient of the sum of squares of every output leaf with respect to ``params``
    and, with ``input_grad``, ``x`` (each may be a pytree). A training step takes no
    gradient of the images, so the stem is timed with ``input_grad=False``."""
    import jax
    import jax.numpy as jnp

    def scalar(p, x):
        return sum(jnp.sum(jnp.square(o)) for o in jax.tree.leaves(fn(p, x)))

    fwd = jax.jit(fn).lower(params, x).compile()
    grad = jax.jit(jax.grad(scalar, argnums=(0, 1) if input_grad else 0)).lower(params, x).compile()
    return (
        _median_ms(lambda: jax.block_until_ready(fwd(params, x)), reps),
        _median_ms(lambda: jax.block_until_ready(grad(params, x)), reps),
    )


def _jax_time_module(module, x, train_kw: bool, reps: int, input_grad: bool = True) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of ``module`` on ``x``; ``train_kw``: the
    module takes ``train=True`` (batch-statistics BN, drop path, dropout)."""
    import jax

    key = jax.random.key(0)
    rngs = {"drop_path": key, "dropout": jax.random.fold_in(key, 1)}
    # One compiled init: op-by-op (eager) init of a whole backbone is slow on a busy CPU.
    if train_kw:
        variables = jax.jit(lambda x: module.init({"params": key, **rngs}, x, train=True))(x)
    else:
        variables = jax.jit(lambda x: module.init(key, x))(x)
    stats = variables.get("batch_stats", {})

    def apply(params, x):
        v = {"params": params, "batch_stats": stats} if stats else {"params": params}
        if train_kw:
            return module.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]
        return module.apply(v, x)

    return _jax_time_fn(apply, variables["params"], x, reps, input_grad)


def jax_times(args, depthwise_impl: str, conv_impl: str) -> dict:
    import functools

    import jax.numpy as jnp
    import numpy as np

    from dmformer_jax.models import layers
    from dmformer_jax.models.dma import DMA
    from dmformer_jax.models.backbone import Block, Downsample, Stem, stem_hidden_width
    from dmformer_jax.models.registry import get_variant

    impls = dict(depthwise_impl=depthwise_impl, conv_impl=conv_impl)
    rng = np.random.RandomState(0)
    time_module = functools.partial(_jax_time_module, reps=args.reps)

    variant = get_variant(args.model)
    out = {}
    images = jnp.asarray(rng.randn(args.batch, args.res, args.res, 3).astype(np.float32))
    hidden = stem_hidden_width(variant.widths)
    out["stem"] = time_module(Stem(variant.widths[0], hidden, conv_impl), images, True, input_grad=False)
    for stage, h, c, _ in stage_shapes(args.model, args.res):
        x = jnp.asarray(rng.randn(args.batch, h, h, c).astype(np.float32))
        out[f"stage_{stage}.block"] = time_module(Block(dma=dict(impls), drop_path_rate=0.1), x, True)
        out[f"stage_{stage}.dma"] = time_module(DMA(**impls), x, True)
        out[f"stage_{stage}.mlp"] = time_module(layers.Mlp(4 * c), x, False)
        if stage > 0:
            prev_c = variant.widths[stage - 1]
            xd = jnp.asarray(rng.randn(args.batch, 2 * h, 2 * h, prev_c).astype(np.float32))
            out[f"stage_{stage}.downsample"] = time_module(Downsample(c, conv_impl), xd, False)
        print(f"    {stage=} done", flush=True)
    return out


def _torch_leaves(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _torch_leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in _torch_leaves(v)]
    return [tree]


def _torch_time_module(module, x, reps: int, input_grad: bool = True) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of ``module`` (training mode) on ``x`` (a
    tensor or a list of tensors); backward of the sum of squares of every output, with
    respect to the inputs and parameters, as `_jax_time_fn`."""
    import torch

    module.train()

    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        xx = [t.clone().requires_grad_(input_grad) for t in x] if isinstance(x, list) else x.clone().requires_grad_(input_grad)
        module.zero_grad(set_to_none=True)
        sum((o ** 2).sum() for o in _torch_leaves(module(xx))).backward()

    return _median_ms(fwd, reps), _median_ms(fwd_bwd, reps)


def torch_times(args) -> dict:
    import functools

    import torch

    from dmformer_jax.models.registry import get_variant
    from dmformer_jax.models.backbone import stem_hidden_width
    from dmformer_jax.torch_model import DMA, Block, Downsample, Mlp, Stem

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    time_module = functools.partial(_torch_time_module, reps=args.reps)

    variant = get_variant(args.model)
    out = {}
    images = torch.randn(args.batch, 3, args.res, args.res)
    out["stem"] = time_module(Stem(variant.widths[0], stem_hidden_width(variant.widths)), images, input_grad=False)
    for stage, h, c, _ in stage_shapes(args.model, args.res):
        x = torch.randn(args.batch, c, h, h)
        out[f"stage_{stage}.block"] = time_module(Block(c, 4.0, 0.1, 1e-5, {}), x)
        out[f"stage_{stage}.dma"] = time_module(DMA(c), x)
        out[f"stage_{stage}.mlp"] = time_module(Mlp(c, 4 * c), torch.randn(args.batch, h, h, c))
        if stage > 0:
            prev_c = variant.widths[stage - 1]
            out[f"stage_{stage}.downsample"] = time_module(
                Downsample(prev_c, c), torch.randn(args.batch, prev_c, 2 * h, 2 * h)
            )
        print(f"    {stage=} done", flush=True)
    return out


def _seg_inputs(args, rng):
    """NHWC float32 arrays: images, the backbone's maps, the neck's maps, logits, labels."""
    import numpy as np

    from dmformer_jax.models.backbone import FEATURE_STRIDES
    from dmformer_jax.models.registry import get_variant

    widths = get_variant(args.model).widths
    b, r = args.batch, args.res
    maps = lambda channels: [  # noqa: E731
        rng.randn(b, r // s, r // s, c).astype(np.float32) for s, c in zip(FEATURE_STRIDES, channels)
    ]
    labels = rng.randint(0, SEG_CLASSES, (b, r, r)).astype(np.int32)
    labels[rng.uniform(size=labels.shape) < 0.1] = 255
    return {
        "images": rng.randn(b, r, r, 3).astype(np.float32),
        "backbone_maps": maps(widths),
        "neck_maps": maps([256] * 4),  # DMFormerSegmentation's neck_channels default
        "logits": rng.randn(b, r // 4, r // 4, SEG_CLASSES).astype(np.float32),
        "labels": labels,
    }


def jax_seg_times(args, depthwise_impl: str, conv_impl: str) -> dict:
    """`SEG_PARTS` of the Semantic FPN model in JAX (``*_impl`` for the backbone; the
    neck and head are plain ``nn.Conv`` either way)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dmformer_jax.models.backbone import FEATURE_NAMES, Backbone
    from dmformer_jax.models.registry import get_variant
    from dmformer_jax.models.seg_heads import FPNNeck, SemanticFPNHead
    from dmformer_jax.tasks.segmentation import pixel_cross_entropy

    data = _seg_inputs(args, np.random.RandomState(0))
    jnp_tree = lambda t: [jnp.asarray(a) for a in t]  # noqa: E731
    out = {}
    backbone = Backbone(**get_variant(args.model).model_kwargs(), out_norms=True,
                        depthwise_impl=depthwise_impl, conv_impl=conv_impl)
    out["backbone"] = _jax_time_module(backbone, jnp.asarray(data["images"]), True, args.reps)
    print("    backbone done", flush=True)
    out["fpn.neck"] = _jax_time_fn(
        lambda p, maps: FPNNeck().apply({"params": p}, maps),
        jax.jit(lambda maps: FPNNeck().init(jax.random.key(0), maps))(jnp_tree(data["backbone_maps"]))["params"],
        jnp_tree(data["backbone_maps"]), args.reps,
    )

    def skip_neck(next_fun, args_, kwargs, context):
        # The head's input is already neck-shaped: the neck passes it through.
        if isinstance(context.module, FPNNeck) and context.method_name == "__call__":
            return args_[0]
        return next_fun(*args_, **kwargs)

    class HeadOnly(nn.Module):
        @nn.compact
        def __call__(self, features, train: bool = False):
            with nn.intercept_methods(skip_neck):
                return SemanticFPNHead(num_classes=SEG_CLASSES, name="decode_head")(features, train=train)

    neck_maps = dict(zip(FEATURE_NAMES, jnp_tree(data["neck_maps"])))
    out["fpn.head"] = _jax_time_module(HeadOnly(), neck_maps, True, args.reps)
    labels = jnp.asarray(data["labels"])
    out["loss"] = _jax_time_fn(lambda _, logits: pixel_cross_entropy(logits, labels)[0], {},
                               jnp.asarray(data["logits"]), args.reps)
    return out


def torch_seg_times(args) -> dict:
    """`SEG_PARTS` of the PyTorch twin (`dmformer_jax.torch_segmentation`), NCHW."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    from dmformer_jax.models.registry import get_variant
    from dmformer_jax.torch_model import BackboneTorch
    from dmformer_jax.torch_segmentation import FPNNeckTorch, SemanticFPNHeadTorch

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    data = _seg_inputs(args, np.random.RandomState(0))
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    widths = get_variant(args.model).widths
    out = {}
    backbone = BackboneTorch(**get_variant(args.model).model_kwargs(), out_norms=True)
    out["backbone"] = _torch_time_module(backbone, nchw(data["images"]), args.reps)
    print("    backbone done", flush=True)
    out["fpn.neck"] = _torch_time_module(FPNNeckTorch(widths, 256), [nchw(a) for a in data["backbone_maps"]],
                                         args.reps)
    head = SemanticFPNHeadTorch(widths, SEG_CLASSES, 256)
    head.neck = nn.Identity()  # the input is already neck-shaped
    out["fpn.head"] = _torch_time_module(head, [nchw(a) for a in data["neck_maps"]], args.reps)
    labels = torch.from_numpy(data["labels"].astype(np.int64))

    class Loss(nn.Module):
        def forward(self, logits):
            logits = F.interpolate(logits, size=labels.shape[1:], mode="bilinear", align_corners=False)
            return F.cross_entropy(logits, labels, ignore_index=255)

    out["loss"] = _torch_time_module(Loss(), nchw(data["logits"]), args.reps)
    return out


def _worker(queue, kind, args):
    try:
        seg = args.parts == "fpn"
        if kind == "torch_eager":
            queue.put(torch_seg_times(args) if seg else torch_times(args))
        else:
            impl = "auto" if kind == "jax" else "xla"
            queue.put((jax_seg_times if seg else jax_times)(args, impl, impl))
    except Exception as e:  # report instead of hanging the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def model_estimate(times: dict, model: str, res: int) -> tuple[float, float]:
    """Σ stem + downsampling + depth × block, forward and forward+backward (ms); for
    the segmentation parts, Σ `SEG_PARTS`."""
    if "backbone" in times:
        return tuple(sum(times[p][i] for p in SEG_PARTS) for i in range(2))
    total = list(times["stem"])
    for stage, _, _, depth in stage_shapes(model, res):
        for i in range(2):
            total[i] += depth * times[f"stage_{stage}.block"][i]
            total[i] += times.get(f"stage_{stage}.downsample", (0.0, 0.0))[i]
    return total[0], total[1]


def markdown(result: dict) -> str:
    kinds = [k for k in CONTENDERS if k in result["times"]]
    seg = result.get("parts") == "fpn"
    what = f"Semantic FPN on `{result['model']}` ({SEG_CLASSES} classes)" if seg else f"`{result['model']}`"
    m = result["machine"]
    lines = [
        f"Run {result['date']}: parts of {what}, batch {result['batch']}, "
        f"{result['res']}×{result['res']} input, float32, median of {result['reps']} "
        "(ms; forward / forward+backward). `jax` = our defaults "
        f"(depth-wise `{result['impl']}`, dense conv `{result['conv_impl']}`"
        + ("; the neck and head use `nn.Conv`" if seg else "") + "); `jax_nn_conv` = "
        "plain `nn.Conv` everywhere; `torch_eager` = the PyTorch twin. Contenders run one "
        f"after the other; load average at the start {m.get('load_average')}, at the end "
        f"{result.get('load_average_end')}.",
        "",
        "| part | " + " | ".join(kinds) + " | torch / jax (fwd+bwd) |",
        "|---|" + "---|" * len(kinds) + "---|",
    ]
    names = list(result["times"][kinds[0]])
    rows = [(n, {k: result["times"][k][n] for k in kinds}) for n in names]
    label = ("**training step estimate** (sum of the parts, no optimizer)" if seg
             else "**model estimate** (depth × block + stem + downsampling)")
    rows.append((label,
                 {k: model_estimate(result["times"][k], result["model"], result["res"]) for k in kinds}))
    for name, per_kind in rows:
        cells = [f"{per_kind[k][0]:.0f} / {per_kind[k][1]:.0f}" for k in kinds]
        ratio = "—"
        if "torch_eager" in per_kind and "jax" in per_kind:
            ratio = f"{per_kind['torch_eager'][1] / per_kind['jax'][1]:.2f}×"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="classifier", choices=["classifier", "fpn"],
                   help="the classifier's blocks, or the Semantic FPN model's backbone/neck/head/loss")
    p.add_argument("--model", default="dmformer_s")
    p.add_argument("--batch", type=int, default=None, help="default 32 (classifier), 2 (fpn)")
    p.add_argument("--res", type=int, default=None, help="default 224 (classifier), 512 (fpn)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--docs", default=None)
    p.add_argument("--smoke", action="store_true", help="dmformer_tiny_test, batch 2, 64 px, 1 rep")
    args = p.parse_args(argv)
    seg = args.parts == "fpn"
    args.batch = args.batch or (2 if seg else 32)
    args.res = args.res or (512 if seg else 224)
    if args.smoke:
        args.model, args.batch, args.res, args.reps = "dmformer_tiny_test", 2, 64, 1
    if args.res % 32:
        p.error(f"--res must be divisible by 32, got {args.res}")
    kinds = [k for k in args.contenders.split(",") if k]
    unknown = sorted(set(kinds) - set(CONTENDERS))
    if unknown:
        p.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")

    import jax

    from dmformer_jax import bench
    from dmformer_jax.models import dense_conv, depthwise

    backend = jax.default_backend()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model, "parts": args.parts,
        "batch": args.batch, "res": args.res, "reps": args.reps,
        "impl": depthwise.resolve_impl("auto"), "conv_impl": dense_conv.resolve_impl("auto"),
        "machine": bench.machine_info(), "times": {},
    }
    ctx = mp.get_context("spawn")
    for kind in kinds:
        print(f"== {kind}", flush=True)
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(queue, kind, args))
        proc.start()
        times = queue.get()
        proc.join()
        if "error" in times:
            print(f"error: {kind} failed: {times['error']}", file=sys.stderr)
            return 1
        result["times"][kind] = times
        fwd, train = model_estimate(times, args.model, args.res)
        print(f"  {kind}: model estimate forward {fwd:.0f} ms, forward+backward {train:.0f} ms", flush=True)
    result["load_average_end"] = bench.load_average()
    tag = f"components_{'fpn_' if seg else ''}{backend}" + ("_smoke" if args.smoke else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"{tag}.json")
    bench.publish(result, markdown(result), tag, out, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
