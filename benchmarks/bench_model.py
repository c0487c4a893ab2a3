"""DMFormer throughput: JAX vs PyTorch eager vs torch.compile, in one run.

For each model: inference img/s and training-step img/s (forward, backward, AdamW
update), compile time, peak memory, FLOPs per image (XLA cost analysis of the
standard-conv model) and achieved GFLOP/s (MFU where the peak is known). Contenders
are timed round-robin (interleaved) so a shared, noisy machine slows them alike;
medians and min–max are reported, with JAX/PyTorch ratios.

A model is a classifier (``dmformer_s``: 1000 classes, cross-entropy on the logits)
or a segmentation model ``HEAD:BACKBONE`` (``fpn:dmformer_s``, ``upernet:dmformer_s``:
150 classes; the training loss is the segmentation task's, i.e. the logits resized
bilinearly to the crop, cross-entropy with ignore 255, plus the auxiliary head's
×0.4 for UperNet; the PyTorch twin is `dmformer_jax.torch_segmentation` with
``F.interpolate`` + ``F.cross_entropy(ignore_index=255)``). Labels are random, ~10%
of pixels 255.

Usage (the tables in docs/benchmarks.md)::

    python benchmarks/bench_model.py --models dmformer_t,dmformer_s --batch 32 --res 224 \
        --reps 5 --out benchmarks/results/cpu_b32_r224.json --docs docs/benchmarks.md
    python benchmarks/bench_model.py --models fpn:dmformer_s --batch 2 --res 512 --reps 3 \
        --docs docs/benchmarks.md

    python benchmarks/bench_model.py --smoke          # tiny sizes, a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing as mp
import os
import resource
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
from dmformer_jax.host_memory import keep_freed_host_memory  # noqa: E402
from dmformer_jax.models import dense_conv, depthwise  # noqa: E402

NUM_CLASSES = 1000  # classifiers (ImageNet)
SEG_CLASSES = 150  # segmentation models (ADE20K)
SEG_IGNORE_FRACTION = 0.1  # share of label pixels set to 255 (ignored)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One ``--models`` entry: a classifier ``BACKBONE`` or a segmentation ``HEAD:BACKBONE``.

    Everything that differs between the two kinds lives here (model constructors, labels,
    loss, RNG streams), so the timing machinery below serves both.
    """

    name: str
    backbone: str
    head: str | None = None  # None: classifier

    @classmethod
    def parse(cls, name: str) -> "ModelSpec":
        from dmformer_jax.models.registry import get_variant
        from dmformer_jax.models.segmentation import HEADS

        head, _, backbone = name.rpartition(":")
        if head and head not in HEADS:
            raise ValueError(f"unknown segmentation head {head!r} in {name!r}; valid heads: {', '.join(HEADS)}")
        get_variant(backbone)  # raises with the valid names
        return cls(name, backbone, head or None)

    def jax_model(self, **overrides):
        if self.head is None:
            return dmformer_jax.create_model(self.backbone, NUM_CLASSES, **overrides)
        return dmformer_jax.create_segmentation_model(self.backbone, self.head, SEG_CLASSES, **overrides)

    def torch_model(self):
        if self.head is None:
            from dmformer_jax.torch_model import create_torch_model

            return create_torch_model(self.backbone, NUM_CLASSES)
        from dmformer_jax.torch_segmentation import create_torch_segmentation_model

        return create_torch_segmentation_model(self.backbone, self.head, SEG_CLASSES)

    def labels(self, rng: np.random.RandomState, batch: int, res: int) -> np.ndarray:
        """int32 ``(B,)`` class ids, or ``(B, res, res)`` label maps with some 255 pixels."""
        if self.head is None:
            return rng.randint(0, NUM_CLASSES, batch).astype(np.int32)
        y = rng.randint(0, SEG_CLASSES, (batch, res, res)).astype(np.int32)
        y[rng.uniform(size=y.shape) < SEG_IGNORE_FRACTION] = 255
        return y

    def train_rngs(self, key) -> dict:
        if self.head is None:
            return {"drop_path": key}
        return {"drop_path": key, "dropout": jax.random.fold_in(key, 1)}

    def jax_loss(self, model):
        """``loss(outputs, labels)`` as the trainer computes it."""
        if self.head is None:
            return lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        from dmformer_jax.tasks.segmentation import SegmentationTask

        task = SegmentationTask()
        task.aux_loss_weight = float(model.aux_loss_weight)
        return lambda outputs, y: task.loss(outputs, {"label": y})[0]

    def torch_loss(self):
        """The same loss for the PyTorch twin's (NCHW) outputs."""
        import torch.nn.functional as F

        if self.head is None:
            return F.cross_entropy

        def seg_ce(logits, y):
            logits = F.interpolate(logits, size=y.shape[1:], mode="bilinear", align_corners=False)
            return F.cross_entropy(logits.float(), y, ignore_index=255)

        aux_weight = float(self.jax_model().aux_loss_weight)

        def loss(outputs, y):
            if isinstance(outputs, dict):  # UperNet in training: + the auxiliary head's loss
                return seg_ce(outputs["logits"], y) + aux_weight * seg_ce(outputs["aux_logits"], y)
            return seg_ce(outputs, y)

        return loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="dmformer_t,dmformer_s",
                   help="comma-separated classifiers (dmformer_s) and segmentation models "
                        "HEAD:BACKBONE (fpn:dmformer_s, upernet:dmformer_s)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per contender")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--impl", default="auto", help=f"JAX depth-wise impl: auto or {depthwise.available_impls()}")
    p.add_argument("--conv-impl", default="auto", help=f"JAX dense-conv impl: auto or {dense_conv.available_impls()}")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--torch", default="eager,compile", help="PyTorch contenders: eager,compile or none")
    p.add_argument("--torch-train", default=None, help="PyTorch contenders for training (default: as --torch)")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--keep-host-memory", type=int, default=1, choices=[0, 1],
                   help="1: every worker keeps freed host memory mapped (dmformer_jax/host_memory.py), "
                        "as train.py does on CPU")
    p.add_argument("--schedule", default="interleaved", choices=["interleaved", "sequential"],
                   help="all contenders alive and timed round-robin, or one alive at a time")
    p.add_argument("--out", default=None, help="JSON result path (default benchmarks/results/<tag>.json)")
    p.add_argument("--docs", default=None, help="markdown file whose generated section is replaced")
    p.add_argument("--smoke", action="store_true",
                   help="dmformer_tiny_test and fpn:dmformer_tiny_test, batch 2, 64 px, 1 rep")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batch, args.res, args.reps, args.warmup = (
            "dmformer_tiny_test,fpn:dmformer_tiny_test", 2, 64, 1, 1)
    if args.res % 32:
        p.error(f"--res must be divisible by 32, got {args.res}")
    try:
        args.specs = [ModelSpec.parse(n) for n in args.models.split(",") if n]
    except (KeyError, ValueError) as e:
        p.error(str(e.args[0] if e.args else e))
    return args


# ---------------------------------------------------------------- JAX contenders

def jax_contenders(spec, args, images, labels, modes=("infer", "train")):
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = spec.jax_model(depthwise_impl=args.impl, conv_impl=args.conv_impl, dtype=dtype)
    variables = jax.tree.map(jnp.asarray, bench.random_variables(model, images.shape))
    x, y = jnp.asarray(images), jnp.asarray(labels)
    out = {}

    infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
    if "infer" not in modes:
        return _jax_train(model, spec, args, x, y, variables, dtype, out)
    start = time.perf_counter()
    infer_c = infer.lower(variables, x).compile()
    out["infer_compile_s"] = time.perf_counter() - start
    out["infer_memory"] = memory_analysis(infer_c)

    def run_infer():
        jax.block_until_ready(infer_c(variables, x))

    ref_model = spec.jax_model(depthwise_impl="xla", conv_impl="xla", dtype=dtype)
    ref_infer = jax.jit(lambda v, x: ref_model.apply(v, x, train=False)).lower(variables, x)
    out["infer_flops"] = flops_of(ref_infer)
    return {"infer": run_infer}, out


def _jax_train(model, spec, args, x, y, variables, dtype, out):
    tx = optax.adamw(1e-3, weight_decay=0.05)
    loss_of = spec.jax_loss(model)

    def loss_fn(params, batch_stats, x, y, key):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True,
            mutable=["batch_stats"], rngs=spec.train_rngs(key),
        )
        return loss_of(outputs, y), updates["batch_stats"]

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(params, batch_stats, opt_state, x, y, key):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    state["opt"] = tx.init(state["params"])
    key = jax.random.key(0)
    start = time.perf_counter()
    train_c = train_step.lower(state["params"], state["batch_stats"], state["opt"], x, y, key).compile()
    out["train_compile_s"] = time.perf_counter() - start
    out["train_memory"] = memory_analysis(train_c)
    counter = [0]

    def run_train():
        counter[0] += 1
        p, b, o, loss = train_c(state["params"], state["batch_stats"], state["opt"], x, y, jax.random.fold_in(key, counter[0]))
        jax.block_until_ready(loss)
        state.update(params=p, batch_stats=b, opt=o)

    # Model FLOPs: XLA's cost analysis of the lowered (unoptimised) HLO of the
    # standard-conv model, so every depth-wise impl is credited the same useful work
    # (the scan in shift_add_vjp would otherwise be counted once, not per row).
    ref_model = spec.jax_model(depthwise_impl="xla", conv_impl="xla", dtype=dtype)

    def ref_loss(params, batch_stats, x, y):
        outputs, _ = ref_model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                     mutable=["batch_stats"], rngs=spec.train_rngs(key))
        return loss_of(outputs, y)

    ref_train = jax.jit(jax.grad(ref_loss)).lower(variables["params"], variables["batch_stats"], x, y)
    out["train_flops"] = flops_of(ref_train)
    return {"train": run_train}, out


def flops_of(lowered) -> float | None:
    cost = lowered.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost["flops"]) if cost and "flops" in cost else None


def memory_analysis(compiled) -> dict | None:
    """XLA's buffer plan: arguments, outputs and temporaries (bytes)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    out = {f: int(getattr(m, f, 0)) for f in fields}
    out["peak_estimate_bytes"] = (
        out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"] - out["alias_size_in_bytes"]
    )
    return out


# ------------------------------------------------------------ PyTorch contenders

def torch_contenders(spec, args, images, labels, variables_np, kinds, modes=("infer", "train")):
    import torch

    from dmformer_jax.checkpoint.convert import flax_to_torch_state_dict

    torch.set_num_threads(args.torch_threads)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))
    autocast = args.dtype == "bfloat16"
    loss_of = spec.torch_loss()
    runs, info = {}, {}

    def fresh():
        m = spec.torch_model()
        sd = flax_to_torch_state_dict(variables_np, like=m.state_dict())
        m.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
        return m

    for kind in kinds:
        eval_model = fresh().eval() if "infer" in modes else None
        train_model = fresh().train() if "train" in modes else None
        opt = torch.optim.AdamW(train_model.parameters(), lr=1e-3, weight_decay=0.05) if train_model else None
        if kind == "compile":
            eval_fn = torch.compile(eval_model) if eval_model else None
            train_fn = torch.compile(train_model) if train_model else None
        else:
            eval_fn, train_fn = eval_model, train_model

        def run_infer(fn=eval_fn):
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                fn(x)

        def run_train(fn=train_fn, opt=opt):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                loss = loss_of(fn(x), y)
            loss.backward()
            opt.step()

        # First calls: compile (torch.compile) or allocator warm-up (eager).
        for mode, fn in (("infer", run_infer), ("train", run_train)):
            if mode in modes:
                start = time.perf_counter()
                fn()
                info[f"{kind}_{mode}_first_call_s"] = time.perf_counter() - start
        runs[f"torch_{kind}"] = {"infer": run_infer, "train": run_train}
    return runs, info


# ---------------------------------------------------------------------- report

def fmt_rate(stats: dict) -> str:
    # Three decimals below 1 img/s (a 512² segmentation step on the CPU is ~0.05 img/s).
    f = lambda v: f"{v:.1f}" if v >= 1 else f"{v:.3f}"  # noqa: E731
    return f"{f(stats['img_per_s_median'])} ({f(stats['img_per_s_min'])}–{f(stats['img_per_s_max'])})"


def _shared(result: dict) -> bool:
    """Whether the load average exceeded what the benchmark itself adds (its cores)."""
    loads = [result["machine"].get("load_average"), result.get("load_average_end")]
    threads = result["machine"].get("torch_threads") or 2
    return any(load and load[0] > threads + 0.5 for load in loads)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Run {result['date']}: batch {result['batch']}, {result['res']}×{result['res']}, "
        f"{result['dtype']}, JAX depth-wise impl `{result['impl']}`, dense-conv impl "
        f"`{result.get('conv_impl', 'xla')}`, {result['reps']} repetitions, schedule "
        f"`{result.get('schedule', 'interleaved')}`, keep host memory "
        f"`{result.get('keep_host_memory', False)}` "
        "(median, min–max img/s).",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['platform']}; JAX {m['jax']} "
        f"(backend {m['jax_backend']}, XLA threads: default, XLA_FLAGS='{m['xla_flags']}'), "
        f"GLIBC_TUNABLES='{m.get('glibc_tunables', '')}' (all contenders), "
        f"Flax {m['flax']}, PyTorch {m.get('torch', '-')} ({m.get('torch_threads', '-')} threads).",
        "",
        f"CPU ISA flags: {' '.join(m.get('cpu_isa_flags') or ['n/a'])}. Load average (1, 5, 15 min) "
        f"at the start {m.get('load_average')}, at the end {result.get('load_average_end')}"
        + (" (the machine was shared: ratios are indicative)." if _shared(result) else "."),
        "",
        "| model | mode | JAX | PyTorch eager | torch.compile | JAX/eager | JAX/compile | JAX GFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        for mode in ("infer", "train"):
            if mode not in r["timings"].get("jax", {}):
                continue
            t = r["timings"]
            cells = [name, "inference" if mode == "infer" else "train step"]
            cells.append(fmt_rate(t["jax"][mode]))
            for kind in ("torch_eager", "torch_compile"):
                cells.append(fmt_rate(t[kind][mode]) if kind in t else "—")
            for kind in ("torch_eager", "torch_compile"):
                ratio = r.get("ratios", {}).get(f"{mode}_jax_over_{kind}")
                cells.append(f"{ratio:.2f}×" if ratio else "—")
            gf = r.get(f"{mode}_gflops_per_s")
            cells.append(f"{gf:.1f}" if gf else "—")
            mfu = r.get(f"{mode}_mfu")
            cells.append(f"{100 * mfu:.1f}%" if mfu else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| model | FLOPs/img fwd | FLOPs/img train | JAX compile infer / train (s) | torch.compile first call infer / train (s) | JAX peak (XLA plan) infer / train | train step RSS growth, minor page faults: JAX / eager / compile |", "|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        j = r["jax_info"]
        ti = r.get("torch_info", {})
        mem = lambda d: f"{d['peak_estimate_bytes'] / 2**20:.0f} MiB" if d else "n/a"  # noqa: E731
        rss = r.get("rss_train_bytes", {})
        rss = {k: v for k, v in rss.items() if not k.endswith("_gemm_gflops")}
        rss_s = " / ".join(
            f"{rss[k] / 2**20:.0f} MiB, {rss.get(f'{k}_minor_faults', 0) / 1e6:.2f}M faults" if k in rss else "—"
            for k in ("jax", "torch_eager", "torch_compile")
        )
        g = lambda key, scale=1.0: f"{j[key] / scale:.2f}" if j.get(key) else "—"  # noqa: E731
        lines.append(
            f"| {name} | {g('infer_flops', result['batch'] * 1e9)} G | {g('train_flops', result['batch'] * 1e9)} G | "
            f"{g('infer_compile_s')} / {g('train_compile_s')} | "
            f"{ti.get('compile_infer_first_call_s', float('nan')):.1f} / {ti.get('compile_train_first_call_s', float('nan')):.1f} | "
            f"{mem(j.get('infer_memory'))} / {mem(j.get('train_memory'))} | {rss_s} |"
        )
    lines += roofline_lines(result)
    lines += cores_busy_lines(result)
    return "\n".join(lines)


def cores_busy_lines(result: dict) -> list[str]:
    """Markdown rows: cores each contender kept busy over its timed steps (`bench.Stats.cores_busy`)."""
    kinds = ("jax", "torch_eager", "torch_compile")
    rows = []
    for name, r in result["models"].items():
        for mode, label in (("infer", "inference"), ("train", "train step")):
            busy = {k: r["timings"][k][mode].get("cores_busy") for k in kinds if mode in r["timings"].get(k, {})}
            if not any(busy.values()):
                continue
            cells = [f"{busy[k]:.2f}" if busy.get(k) else "—" for k in kinds]
            rows.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        f"Cores busy: each worker's process CPU seconds (all threads) ÷ wall seconds over the "
        f"timed steps, of {result['machine']['cpu_count']} cores. Below the core count, "
        "part of the step runs on fewer threads; idle-spinning threads count as busy.",
        "",
        "| model | mode | JAX | PyTorch eager | torch.compile |",
        "|---|---|---|---|---|",
        *rows,
    ]


def roofline_lines(result: dict) -> list[str]:
    """Markdown rows: each contender's GFLOP/s as a fraction of the measured GEMM roofline."""
    names = {"jax": "JAX", "torch_eager": "PyTorch eager", "torch_compile": "torch.compile"}
    rows = []
    for name, r in result["models"].items():
        for mode, label in (("infer", "inference"), ("train", "train step")):
            gemm = {k: v for k, v in r.get("gemm_gflops", {}).items() if k.startswith(f"{mode}_")}
            roof = {k[len(mode) + 1:]: v for k, v in r.get("roofline", {}).items() if k.startswith(f"{mode}_")}
            if not roof:
                continue
            xla = gemm.get(f"{mode}_jax")
            pt = max((v for k, v in gemm.items() if k.startswith(f"{mode}_torch")), default=None)
            cells = [
                f"{roof[k]['gflops_per_s']:.0f} ({100 * roof[k]['fraction_of_best_gemm']:.0f}%)" if k in roof else "—"
                for k in names
            ]
            rows.append(
                f"| {name} | {label} | {xla:.0f} | " + (f"{pt:.0f}" if pt else "—") + " | " + " | ".join(cells) + " |"
            )
    if not rows:
        return []
    return [
        "",
        "Matmul roofline: 2048² float32 GEMM measured in each worker (XLA in the JAX worker, "
        "PyTorch in its workers; best of 5). Model GFLOP/s credit every contender the same "
        "FLOPs (XLA's count for the standard-conv model); % = of the faster library's GEMM.",
        "",
        "| model | mode | XLA GEMM GFLOP/s | PyTorch GEMM GFLOP/s | JAX GFLOP/s | PyTorch eager GFLOP/s | torch.compile GFLOP/s |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def time_step(fn) -> dict[str, float]:
    """Runs ``fn()`` once: its wall seconds and this process's CPU seconds, all threads
    (``time.process_time``: XLA and PyTorch compute on worker threads)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start}


def _worker(conn, kind, spec, args, images, labels, variables_np, mode):
    """One contender in its own process: builds it, then runs one step per 'run'.

    Separate processes keep XLA's and PyTorch's thread pools from competing for the
    cores (in one process, XLA's idle-spinning workers slowed PyTorch several-fold),
    while the parent still interleaves the contenders step by step.
    """
    try:
        if args.keep_host_memory:
            keep_freed_host_memory()  # every contender alike (PyTorch's allocator as well)
        if kind == "jax":
            runs, info = jax_contenders(spec, args, images, labels, modes=(mode,))
            fn = runs[mode]
        else:
            runs, info = torch_contenders(spec, args, images, labels, variables_np, [kind], modes=(mode,))
            fn = runs[f"torch_{kind}"][mode]
        conn.send(("ready", info))
        while True:
            cmd = conn.recv()
            if cmd == "run":
                conn.send(time_step(fn))
            elif cmd == "gemm":  # this process's matmul roofline (its library, its threads)
                conn.send(bench.gemm_gflops("jax" if kind == "jax" else "torch"))
            elif cmd == "rss":  # one more step: resident-set growth and minor page faults
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                with bench.RssPeak() as peak:
                    fn()
                conn.send((peak.delta, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
            else:
                break
    except Exception as e:  # report instead of hanging the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))


def run_phase(spec, args, images, labels, variables_np, mode, kinds):
    """Times JAX and the PyTorch ``kinds`` in ``mode``. Returns ``(stats, infos, rss)``;
    ``rss`` also holds each worker's 2048² float32 GEMM GFLOP/s (``<key>_gemm_gflops``).

    ``--schedule interleaved``: all workers alive at once, one step each in turn
    (round-robin), so a busy machine slows all alike. ``sequential``: one worker
    alive at a time (start, warm up, time, stop), so no contender runs beside the
    others' resident memory. See docs/benchmarks.md for why both exist.
    """
    contenders = ["jax", *kinds]
    groups = [contenders] if args.schedule == "interleaved" else [[k] for k in contenders]
    stats, infos, rss = {}, {}, {}
    for group in groups:
        s, i, r = _time_workers(spec, args, images, labels, variables_np, mode, group)
        stats.update(s)
        infos.update(i)
        rss.update(r)
    return stats, infos, rss


def _time_workers(spec, args, images, labels, variables_np, mode, kinds):
    """Starts one worker per contender in ``kinds`` (one after another, so compiles do
    not overlap), times them round-robin, stops them."""
    ctx = mp.get_context("spawn")
    workers = {}
    infos = {}
    try:
        for kind in kinds:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, kind, spec, args, images, labels, variables_np, mode))
            proc.start()
            status, info = parent.recv()
            if status == "error":
                raise RuntimeError(f"{kind} {mode} worker failed: {info}")
            key = "jax" if kind == "jax" else f"torch_{kind}"
            workers[key] = (proc, parent)
            infos[key] = info
            print(f"  [{mode}] {key} ready: {info}", flush=True)

        def call(conn):
            conn.send("run")
            reply = conn.recv()
            if isinstance(reply, tuple):
                raise RuntimeError(f"worker failed: {reply[1]}")
            return reply

        times = {k: [] for k in workers}
        cpu = {k: [] for k in workers}
        for _ in range(args.warmup):
            for _, conn in workers.values():
                call(conn)
        for _ in range(args.reps):
            for k, (_, conn) in workers.items():
                reply = call(conn)
                times[k].append(reply["wall_s"])
                cpu[k].append(reply["cpu_s"])
        rss = {}
        for k, (_, conn) in workers.items():
            conn.send("gemm")
            rss[f"{k}_gemm_gflops"] = conn.recv()
        if jax.default_backend() == "cpu":
            for k, (_, conn) in workers.items():
                conn.send("rss")
                rss[k], rss[f"{k}_minor_faults"] = conn.recv()
        return {k: bench.Stats(t, cpu_times=cpu[k]) for k, t in times.items()}, infos, rss
    finally:
        for proc, conn in workers.values():
            try:
                conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def main(argv=None) -> int:
    args = parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    kinds = [k for k in args.torch.split(",") if k and k != "none"]
    tag = f"{jax.default_backend()}_b{args.batch}_r{args.res}_{args.dtype}" + ("_smoke" if args.smoke else "")
    out_path = Path(args.out or Path(__file__).parent / "results" / f"{tag}.json")
    extra = {}
    if kinds:
        import torch

        extra = {"torch": torch.__version__, "torch_threads": args.torch_threads}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "batch": args.batch, "res": args.res, "dtype": args.dtype, "reps": args.reps, "schedule": args.schedule,
        "keep_host_memory": bool(args.keep_host_memory),
        "impl": depthwise.resolve_impl(args.impl), "conv_impl": dense_conv.resolve_impl(args.conv_impl),
        "machine": bench.machine_info(extra), "models": {},
    }
    rng = np.random.RandomState(0)
    for spec in args.specs:
        name = spec.name
        print(f"== {name}", flush=True)
        images = rng.randn(args.batch, args.res, args.res, 3).astype(np.float32)
        labels = spec.labels(rng, args.batch, args.res)
        variables_np = bench.random_variables(spec.jax_model(), images.shape)
        entry = {"jax_info": {}, "torch_info": {}, "timings": {}, "ratios": {}, "rss_bytes": {}}
        for mode in modes:
            mode_kinds = kinds
            if mode == "train" and args.torch_train is not None:
                mode_kinds = [k for k in args.torch_train.split(",") if k and k != "none"]
            stats, infos, rss = run_phase(spec, args, images, labels, variables_np, mode, mode_kinds)
            entry["jax_info"].update(infos.pop("jax"))
            for info in infos.values():
                entry["torch_info"].update(info)
            entry["rss_bytes"][mode] = rss
            for k, st in stats.items():
                entry["timings"].setdefault(k, {})[mode] = st.as_dict(args.batch)
                print(f"  {mode:5s} {k:14s} {fmt_rate(entry['timings'][k][mode])} img/s", flush=True)
                if k != "jax":
                    entry["ratios"][f"{mode}_jax_over_{k}"] = st.median / stats["jax"].median
            flops = entry["jax_info"].get(f"{mode}_flops")
            gemm = {k[: -len("_gemm_gflops")]: v for k, v in rss.items() if k.endswith("_gemm_gflops")}
            if gemm:
                # The matmul roofline: the faster library's 2048² GEMM, measured in the workers.
                entry.setdefault("gemm_gflops", {}).update({f"{mode}_{k}": v for k, v in gemm.items()})
            if flops and gemm:
                roofline = max(gemm.values())
                for k, st in stats.items():  # every contender credited the same model FLOPs
                    entry.setdefault("roofline", {})[f"{mode}_{k}"] = {
                        "gflops_per_s": flops / st.median / 1e9,
                        "fraction_of_best_gemm": flops / st.median / 1e9 / roofline,
                    }
            if flops:
                entry[f"{mode}_gflops_per_s"] = flops / stats["jax"].median / 1e9
                peak = bench.peak_tflops(jax.devices()[0].device_kind)
                entry[f"{mode}_mfu"] = flops / stats["jax"].median / (peak * 1e12) if peak else None
        entry["rss_train_bytes"] = entry["rss_bytes"].get("train", {})
        print("  ratios (JAX speed / PyTorch speed):", {k: round(v, 3) for k, v in entry["ratios"].items()}, flush=True)
        result["models"][name] = entry
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))  # partial results survive a later failure
    result["load_average_end"] = bench.load_average()
    bench.publish(result, markdown(result), tag, out_path, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
