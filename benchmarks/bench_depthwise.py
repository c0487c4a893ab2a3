"""Depth-wise conv micro-benchmark: every JAX impl vs PyTorch, fwd and fwd+bwd per (k, d).

Contenders are timed round-robin; medians (min–max) in ms. fwd+bwd means the output,
the input gradient and the kernel gradient for a fixed cotangent.

    python benchmarks/bench_depthwise.py --shape 32,56,56,64 --reps 5 \
        --out benchmarks/results/depthwise_cpu.json --docs docs/benchmarks.md
    python benchmarks/bench_depthwise.py --smoke
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dmformer_jax import bench  # noqa: E402
from dmformer_jax.models import depthwise  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="32,56,56,64", help="B,H,W,C (NHWC)")
    p.add_argument("--cases", default="3:1,5:2,7:3", help="k:dilation pairs")
    p.add_argument("--impls", default=",".join(depthwise.available_impls()))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--docs", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.reps, args.cases = "2,16,16,8", 1, "3:1,7:3"
    shape = tuple(int(s) for s in args.shape.split(","))
    cases = [tuple(int(v) for v in c.split(":")) for c in args.cases.split(",")]
    impls = args.impls.split(",")
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    torch = None
    extra = {}
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.torch_threads)
        extra = {"torch": torch.__version__, "torch_threads": args.torch_threads}
    rng = np.random.RandomState(0)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "shape_nhwc": shape,
               "dtype": args.dtype, "reps": args.reps, "machine": bench.machine_info(extra), "cases": []}
    for k, d in cases:
        pad = d * (k - 1) // 2
        x_np = rng.randn(*shape).astype(np.float32)
        w_np = rng.randn(k, k, 1, shape[-1]).astype(np.float32)
        ct_np = rng.randn(*shape).astype(np.float32)
        x, w, ct = jnp.asarray(x_np, dtype), jnp.asarray(w_np, dtype), jnp.asarray(ct_np, dtype)
        contenders = {
            f"jax_{impl}": bench.jax_fwd_and_fwd_bwd(
                functools.partial(depthwise.depthwise_conv2d, dilation=d, padding=pad, impl=impl), x, w, ct
            )
            for impl in impls
        }
        if torch is not None:
            tdtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
            conv_t = functools.partial(torch.nn.functional.conv2d, padding=pad, dilation=d, groups=shape[-1])
            contenders["torch"] = bench.torch_fwd_and_fwd_bwd(conv_t, x_np, w_np, ct_np, tdtype)
        case = {"k": k, "dilation": d}
        case.update(bench.time_fwd_and_fwd_bwd(contenders, args.reps, f"k={k} d={d}"))
        results["cases"].append(case)
    tag = f"depthwise_{jax.default_backend()}_{args.dtype}" + ("_smoke" if args.smoke else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"{tag}.json")
    names = list(results["cases"][0]["fwd"])
    m = results["machine"]
    lines = [
        f"Run {results['date']}: NHWC {'×'.join(map(str, shape))}, {args.dtype}, {args.reps} interleaved "
        f"repetitions, median ms (min–max). {m['cpu_model']}, {m['cpu_count']} cores; JAX {m['jax']} "
        f"(XLA threads default), PyTorch {m.get('torch', '-')} ({m.get('torch_threads', '-')} threads, NCHW "
        "`F.conv2d(groups=C)`).",
        "",
        "| k, d | pass | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for case in results["cases"]:
        for label in ("fwd", "fwd_bwd"):
            cells = [f"{1e3 * case[label][n]['median_s']:.1f} ({1e3 * case[label][n]['min_s']:.0f}–{1e3 * case[label][n]['max_s']:.0f})" for n in names]
            lines.append(f"| {case['k']}, {case['dilation']} | {label.replace('_', '+')} | " + " | ".join(cells) + " |")
    bench.publish(results, "\n".join(lines), tag, out, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
