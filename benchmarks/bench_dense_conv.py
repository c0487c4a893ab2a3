"""Dense-conv micro-benchmark: every JAX impl vs PyTorch, fwd and fwd+bwd, DMFormer's shapes.

The shapes are dmformer_s's stem, downsampling and 1×1 convs at 224×224 input.
Contenders are timed round-robin; medians (min–max) in ms. fwd+bwd means the
output, the input gradient and the kernel gradient for a fixed cotangent.

    python benchmarks/bench_dense_conv.py --batch 32 --reps 3 --docs docs/benchmarks.md
    python benchmarks/bench_dense_conv.py --smoke
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
from dmformer_jax.models import dense_conv  # noqa: E402

# (label, H, C_in, C_out, k, stride, padding) for dmformer_s at 224×224.
CASES = [
    ("stem 7×7 s2", 224, 3, 64, 7, 2, 3),
    ("stem 3×3", 112, 64, 64, 3, 1, 1),
    ("stem 2×2 s2", 112, 64, 64, 2, 2, 0),
    ("downsample 3×3 s2", 56, 64, 128, 3, 2, 1),
    ("downsample 3×3 s2", 28, 128, 320, 3, 2, 1),
    ("1×1 expand", 56, 64, 192, 1, 1, 0),
    ("1×1 reduce", 56, 192, 64, 1, 1, 0),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--docs", default=None)
    p.add_argument("--smoke", action="store_true", help="batch 1, spatial sizes / 8, 1 rep")
    args = p.parse_args(argv)
    scale = 8 if args.smoke else 1
    if args.smoke:
        args.batch, args.reps = 1, 1
    torch = None
    extra = {}
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.torch_threads)
        extra = {"torch": torch.__version__, "torch_threads": args.torch_threads}
    rng = np.random.RandomState(0)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "batch": args.batch,
               "reps": args.reps, "machine": bench.machine_info(extra), "cases": []}
    for label, h, c_in, c_out, k, stride, pad in CASES:
        h //= scale
        out_h = (h + 2 * pad - k) // stride + 1
        x_np = rng.randn(args.batch, h, h, c_in).astype(np.float32)
        w_np = (rng.randn(k, k, c_in, c_out) / np.sqrt(k * k * c_in)).astype(np.float32)
        ct_np = rng.randn(args.batch, out_h, out_h, c_out).astype(np.float32)
        x, w, ct = jnp.asarray(x_np), jnp.asarray(w_np), jnp.asarray(ct_np)
        contenders = {
            f"jax_{impl}": bench.jax_fwd_and_fwd_bwd(
                functools.partial(dense_conv.conv2d, stride=stride, padding=pad, impl=impl), x, w, ct
            )
            for impl in dense_conv.available_impls()
        }
        if torch is not None:
            conv_t = functools.partial(torch.nn.functional.conv2d, stride=stride, padding=pad)
            contenders["torch"] = bench.torch_fwd_and_fwd_bwd(conv_t, x_np, w_np, ct_np)
        case = {"label": label, "h": h, "c_in": c_in, "c_out": c_out, "k": k, "stride": stride, "padding": pad}
        case.update(bench.time_fwd_and_fwd_bwd(contenders, args.reps, f"{label} {h}² {c_in}->{c_out}"))
        results["cases"].append(case)
    tag = f"dense_conv_{jax.default_backend()}" + ("_smoke" if args.smoke else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"{tag}.json")
    names = list(results["cases"][0]["fwd"])
    m = results["machine"]
    lines = [
        f"Run {results['date']}: batch {args.batch}, float32, NHWC, {args.reps} interleaved repetitions, "
        f"median ms (min–max). {m['cpu_model']}, {m['cpu_count']} cores; JAX {m['jax']}, PyTorch "
        f"{m.get('torch', '-')} ({m.get('torch_threads', '-')} threads, NCHW `F.conv2d`).",
        "",
        "| conv | input | pass | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for case in results["cases"]:
        for name in ("fwd", "fwd_bwd"):
            cells = [
                f"{1e3 * case[name][n]['median_s']:.0f} ({1e3 * case[name][n]['min_s']:.0f}–{1e3 * case[name][n]['max_s']:.0f})"
                for n in names
            ]
            shape = f"{case['h']}² × {case['c_in']} → {case['c_out']}"
            lines.append(f"| {case['label']} | {shape} | {name.replace('_', '+')} | " + " | ".join(cells) + " |")
    bench.publish(results, "\n".join(lines), tag, out, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
