"""One-command accelerator check: GPU outputs vs CPU, then bf16 training speed per impl.

Contenders are ``DEPTHWISE[:CONV]`` implementation pairs (`--impls`; the dense-conv
impl defaults to 'auto', i.e. XLA's conv on GPU/TPU).

1. For every contender, dmformer_s logits and the input gradient of
   the mean logit on the accelerator are compared with the CPU backend's (same
   process, same weights, float32, matmul precision 'highest'), so a wrong or
   precision-losing kernel shows up before any timing.
2. dmformer_s training steps (forward, backward, AdamW) in bfloat16 compute with
   float32 parameters at batch 128, 224×224, for each implementation: compile time,
   img/s (median of timed steps), achieved TFLOP/s and MFU against the card's peak
   bf16 rate, and the peak device memory in use.

    python benchmarks/gpu_check.py                 # on the GPU machine, < 8 minutes
    python benchmarks/gpu_check.py --smoke         # tiny sizes; runs on CPU too

Writes benchmarks/results/gpu_check_<device>.json. Pick ``DEFAULT_IMPL_BY_BACKEND['gpu']``
in dmformer_jax/models/depthwise.py and dense_conv.py from its table.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import dmformer_jax  # noqa: E402
from dmformer_jax import bench  # noqa: E402
from dmformer_jax.models import dense_conv, depthwise  # noqa: E402

# Depth-wise x dense-conv pairs timed by default: every depth-wise impl with the
# backend's default dense conv, plus XLA's depth-wise conv with im2col gradients.
DEFAULT_CONTENDERS = ",".join([*depthwise.available_impls(), "xla:im2col"])


def parse_contender(text: str) -> tuple[str, str]:
    """``'shift_add_vjp'`` -> ``('shift_add_vjp', 'auto')``; ``'xla:im2col'`` -> ``('xla', 'im2col')``."""
    dw, _, conv = text.partition(":")
    depthwise.resolve_impl(dw)
    dense_conv.resolve_impl(conv or "auto")
    return dw, conv or "auto"


def check_outputs(name, impls, res, batch, tol):
    """Max |accelerator − CPU| / max |CPU| for logits and input gradients, per impl."""
    cpu = jax.devices("cpu")[0]
    acc = jax.devices()[0]
    rng = np.random.RandomState(0)
    x = rng.randn(batch, res, res, 3).astype(np.float32)
    model = dmformer_jax.create_model(name, 1000)
    variables = bench.random_variables(model, x.shape)
    report = {}
    with jax.default_matmul_precision("highest"):
        ref_model = dmformer_jax.create_model(name, 1000, depthwise_impl="xla", conv_impl="xla")

        def out_and_grad(m, v, x):
            logits = m.apply(v, x)
            return logits, jax.grad(lambda x: m.apply(v, x).mean())(x)

        v_cpu, x_cpu = jax.device_put((variables, x), cpu)
        ref_logits, ref_grad = jax.jit(functools.partial(out_and_grad, ref_model))(v_cpu, x_cpu)
        ref_logits, ref_grad = np.asarray(ref_logits), np.asarray(ref_grad)
        for impl in impls:
            dw, conv = parse_contender(impl)
            m = dmformer_jax.create_model(name, 1000, depthwise_impl=dw, conv_impl=conv)
            v_acc, x_acc = jax.device_put((variables, x), acc)
            logits, grad = jax.jit(functools.partial(out_and_grad, m))(v_acc, x_acc)
            err_l = float(np.max(np.abs(np.asarray(logits) - ref_logits)) / np.max(np.abs(ref_logits)))
            err_g = float(np.max(np.abs(np.asarray(grad) - ref_grad)) / np.max(np.abs(ref_grad)))
            ok = err_l <= tol and err_g <= tol
            report[impl] = {"logits_rel_err": err_l, "input_grad_rel_err": err_g, "ok": ok}
            print(f"check {impl:14s} logits rel err {err_l:.2e}, input grad rel err {err_g:.2e} "
                  f"{'OK' if ok else 'FAIL'} (tol {tol:g}, vs CPU backend)", flush=True)
    return report


def time_training(name, impl, batch, res, steps, max_step_s):
    """bf16 compute / f32 params training steps; returns a dict of timings."""
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(batch, res, res, 3).astype(np.float32))
    y = jnp.asarray(rng.randint(0, 1000, batch).astype(np.int32))
    dw, conv = parse_contender(impl)
    model = dmformer_jax.create_model(name, 1000, depthwise_impl=dw, conv_impl=conv, dtype=jnp.bfloat16)
    variables = jax.tree.map(jnp.asarray, bench.random_variables(model, x.shape))
    tx = optax.adamw(1e-3, weight_decay=0.05)

    def loss_fn(params, batch_stats, x, y, key):
        logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"], rngs={"drop_path": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, batch_stats, opt_state, x, y, key):
        (loss, bs), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, y, key)
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), bs, opt_state, loss

    params, bstats = variables["params"], variables["batch_stats"]
    opt = tx.init(params)
    key = jax.random.key(0)
    start = time.perf_counter()
    lowered = step.lower(params, bstats, opt, x, y, key)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    # Model FLOPs from the standard-conv model (scan bodies are counted once by XLA).
    ref = dmformer_jax.create_model(name, 1000, depthwise_impl="xla", conv_impl="xla", dtype=jnp.bfloat16)
    ref_loss = lambda p, b, x, y: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        ref.apply({"params": p, "batch_stats": b}, x, train=True, mutable=["batch_stats"],
                  rngs={"drop_path": key})[0], y).mean()
    # Counted on the CPU backend: on GPU (jax 0.11) Lowered.cost_analysis() is None and the
    # compiled one leaves out cuDNN's convolutions (custom calls), about 12x too few FLOPs.
    ref_lowered = jax.jit(jax.grad(ref_loss)).lower(*jax.device_put((params, bstats, x, y), jax.devices("cpu")[0]))
    cost = ref_lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost["flops"]) if cost and "flops" in cost else float("nan")
    times, losses = [], []
    for i in range(steps + 1):
        t = time.perf_counter()
        params, bstats, opt, loss = compiled(params, bstats, opt, x, y, jax.random.fold_in(key, i))
        loss = float(loss)
        if i:  # step 0 is warm-up
            times.append(time.perf_counter() - t)
        losses.append(loss)
        if i == 0 and time.perf_counter() - t > max_step_s:
            steps = 1  # hopelessly slow path: one timed step is enough to say so
    med = statistics.median(times)
    peak = bench.peak_tflops(jax.devices()[0].device_kind)
    out = {
        "compile_s": compile_s, "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
        "img_per_s": batch / med, "train_flops_per_img": flops / batch, "tflops_per_s": flops / med / 1e12,
        "mfu": (flops / med / (peak * 1e12)) if peak else None, "losses": losses,
        "finite": bool(np.all(np.isfinite(losses))),
    }
    try:
        stats = jax.devices()[0].memory_stats() or {}
        out["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
    except Exception:
        pass
    mfu = f"{100 * out['mfu']:.1f}%" if out["mfu"] else "n/a (peak unknown)"
    print(f"train {impl:14s} {out['img_per_s']:8.1f} img/s  ({batch / max(times):.1f}–{batch / min(times):.1f}), "
          f"{out['tflops_per_s']:.2f} TFLOP/s, MFU {mfu}, compile {compile_s:.0f}s, loss finite {out['finite']}",
          flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dmformer_s")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--impls", default=DEFAULT_CONTENDERS, help="comma-separated DEPTHWISE[:CONV] impl pairs")
    p.add_argument("--check-batch", type=int, default=4)
    p.add_argument("--tol", type=float, default=2e-3, help="relative tolerance GPU vs CPU (float32)")
    p.add_argument("--max-step-s", type=float, default=30.0, help="an impl slower than this per step gets 1 timed step")
    p.add_argument("--smoke", action="store_true", help="dmformer_tiny_test, batch 2, 64 px, 2 steps")
    p.add_argument("--no-check", action="store_true", help="skip the GPU-vs-CPU output check")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.batch, args.res, args.steps, args.check_batch = "dmformer_tiny_test", 2, 64, 2, 1
    impls = args.impls.split(",")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), JAX {jax.__version__}, impls {impls}", flush=True)
    result = {"device": device.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
              "model": args.model, "batch": args.batch, "res": args.res}
    result["check"] = {} if args.no_check else check_outputs(
        args.model, impls, args.res if args.smoke else 224, args.check_batch, args.tol)
    result["train_bf16"] = {}
    for impl in impls:
        result["train_bf16"][impl] = time_training(args.model, impl, args.batch, args.res, args.steps, args.max_step_s)
    best = max(result["train_bf16"], key=lambda k: result["train_bf16"][k]["img_per_s"])
    print(f"fastest on {device.device_kind}: {best}; current default for '{jax.default_backend()}': "
          f"{depthwise.resolve_impl('auto')}:{dense_conv.resolve_impl('auto')}", flush=True)
    safe = "".join(c if c.isalnum() else "_" for c in device.device_kind)
    out = Path(args.out or Path(__file__).parent / "results" / f"gpu_check_{safe}{'_smoke' if args.smoke else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0 if all(r["ok"] for r in result["check"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
