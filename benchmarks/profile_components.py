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


def jax_times(args, depthwise_impl: str, conv_impl: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dmformer_jax.models import layers
    from dmformer_jax.models.dma import DMA
    from dmformer_jax.models.backbone import Block, Downsample, Stem, stem_hidden_width
    from dmformer_jax.models.registry import get_variant

    impls = dict(depthwise_impl=depthwise_impl, conv_impl=conv_impl)
    rng = np.random.RandomState(0)
    key = jax.random.key(0)

    def time_module(module, x, train_kw: bool, input_grad: bool = True):
        """(forward ms, forward+backward ms) of ``module`` on ``x``."""
        rngs = {"params": key, "drop_path": key}
        variables = module.init(rngs, x, train=True) if train_kw else module.init(key, x)
        stats = variables.get("batch_stats", {})

        def apply(params, x):
            v = {"params": params, "batch_stats": stats} if stats else {"params": params}
            if train_kw:
                return module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"drop_path": key})[0]
            return module.apply(v, x)

        fwd = jax.jit(apply).lower(variables["params"], x).compile()
        argnums = (0, 1) if input_grad else 0
        grad = jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2), argnums=argnums))
        grad = grad.lower(variables["params"], x).compile()
        p = variables["params"]
        return (
            _median_ms(lambda: jax.block_until_ready(fwd(p, x)), args.reps),
            _median_ms(lambda: jax.block_until_ready(grad(p, x)), args.reps),
        )

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


def torch_times(args) -> dict:
    import torch

    from dmformer_jax.models.registry import get_variant
    from dmformer_jax.models.backbone import stem_hidden_width
    from dmformer_jax.torch_model import DMA, Block, Downsample, Mlp, Stem

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)

    def time_module(module, x, input_grad=True):
        module.train()

        def fwd():
            with torch.no_grad():
                module(x)

        def fwd_bwd():
            xx = x.clone().requires_grad_(input_grad)
            module.zero_grad(set_to_none=True)
            (module(xx) ** 2).sum().backward()

        return _median_ms(fwd, args.reps), _median_ms(fwd_bwd, args.reps)

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


def _worker(queue, kind, args):
    try:
        if kind == "torch_eager":
            queue.put(torch_times(args))
        elif kind == "jax":
            queue.put(jax_times(args, "auto", "auto"))
        else:
            queue.put(jax_times(args, "xla", "xla"))
    except Exception as e:  # report instead of hanging the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def model_estimate(times: dict, model: str, res: int) -> tuple[float, float]:
    """Σ stem + downsampling + depth × block, forward and forward+backward (ms)."""
    total = list(times["stem"])
    for stage, _, _, depth in stage_shapes(model, res):
        for i in range(2):
            total[i] += depth * times[f"stage_{stage}.block"][i]
            total[i] += times.get(f"stage_{stage}.downsample", (0.0, 0.0))[i]
    return total[0], total[1]


def markdown(result: dict) -> str:
    kinds = [k for k in CONTENDERS if k in result["times"]]
    lines = [
        f"Run {result['date']}: `{result['model']}` parts, batch {result['batch']}, "
        f"{result['res']}×{result['res']} input, float32, median of {result['reps']} "
        "(ms; forward / forward+backward). `jax` = our defaults "
        f"(depth-wise `{result['impl']}`, dense conv `{result['conv_impl']}`); `jax_nn_conv` = "
        "plain `nn.Conv` everywhere; `torch_eager` = the PyTorch twin.",
        "",
        "| part | " + " | ".join(kinds) + " | torch / jax (fwd+bwd) |",
        "|---|" + "---|" * len(kinds) + "---|",
    ]
    names = list(result["times"][kinds[0]])
    rows = [(n, {k: result["times"][k][n] for k in kinds}) for n in names]
    rows.append(("**model estimate** (depth × block + stem + downsampling)",
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
    p.add_argument("--model", default="dmformer_s")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--docs", default=None)
    p.add_argument("--smoke", action="store_true", help="dmformer_tiny_test, batch 2, 64 px, 1 rep")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.batch, args.res, args.reps = "dmformer_tiny_test", 2, 64, 1
    kinds = [k for k in args.contenders.split(",") if k]
    unknown = sorted(set(kinds) - set(CONTENDERS))
    if unknown:
        p.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")

    import jax

    from dmformer_jax import bench
    from dmformer_jax.models import dense_conv, depthwise

    backend = jax.default_backend()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
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
    tag = f"components_{backend}" + ("_smoke" if args.smoke else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"{tag}.json")
    bench.publish(result, markdown(result), tag, out, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
