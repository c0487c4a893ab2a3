"""Timing helpers shared by the benchmark scripts (no torch import here).

`time_interleaved` runs several contenders in round-robin order so that a noisy,
shared machine slows them alike; `Stats` keeps median and min–max;
`machine_info` describes the host for the result files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

# Peak dense bf16 FLOP/s by accelerator (performance.md); MFU is reported only here.
PEAK_BF16_TFLOPS = {
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6e": 918.0,
    "TPU v6 lite": 918.0, "A100": 312.0, "H100": 989.0, "H200": 989.0,
}


@dataclasses.dataclass
class Stats:
    """Seconds per call over repetitions: median and spread.

    ``cpu_times``, where given, are the process CPU seconds (all threads, user +
    system) of the same calls, for `cores_busy`.
    """

    times: list[float]
    cpu_times: list[float] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def low(self) -> float:
        return min(self.times)

    @property
    def high(self) -> float:
        return max(self.times)

    @property
    def cores_busy(self) -> float | None:
        """How many cores the calls kept busy: Σ CPU-s ÷ Σ wall-s (None without CPU times).

        On a 2-core machine 2.0 is both cores busy for the whole call. A contender below
        the core count leaves cores idle (work that runs on one thread); one at the core
        count that is still slower does more work per call. Idle-spinning worker
        threads count as busy, so this is an upper bound on useful work.
        """
        return sum(self.cpu_times) / sum(self.times) if self.cpu_times else None

    def as_dict(self, items_per_call: int | None = None) -> dict[str, Any]:
        out = {"median_s": self.median, "min_s": self.low, "max_s": self.high, "times_s": self.times}
        if self.cpu_times:
            out.update(cpu_times_s=self.cpu_times, cores_busy=self.cores_busy)
        if items_per_call:
            out.update(
                img_per_s_median=items_per_call / self.median,
                img_per_s_min=items_per_call / self.high,
                img_per_s_max=items_per_call / self.low,
            )
        return out


def time_interleaved(
    contenders: Mapping[str, Callable[[], Any]], repetitions: int, warmup: int = 1
) -> dict[str, Stats]:
    """Times each zero-argument callable ``repetitions`` times, round-robin.

    Each callable must block until its work is done (``jax.block_until_ready``).
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repetitions):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: Stats(t) for name, t in times.items()}


class RssPeak:
    """Samples this process's resident set size in a thread; ``peak - base`` in bytes.

    A CPU stand-in for a peak-memory counter: it sees every allocator (XLA's, torch's),
    so run it around one contender at a time.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.base = self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> "RssPeak":
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def delta(self) -> int:
        return self.peak - self.base


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The SIMD extensions that decide CPU speed (XLA's and oneDNN's kernels, libjpeg-turbo).
_ISA_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx", "bmi")


def cpu_isa_flags() -> list[str]:
    """The host CPU's SIMD flags from /proc/cpuinfo (sse4*, avx*, fma, f16c, amx*,
    bmi*), sorted; [] where /proc/cpuinfo is missing."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(_ISA_PREFIXES))
    except OSError:
        pass
    return []


def isa_line(flags: list[str]) -> str:
    """One line for result tables: AVX-512 yes/no, then the flags."""
    avx512 = "AVX-512" if any(f.startswith("avx512") for f in flags) else "no AVX-512"
    return f"{avx512}; flags: {' '.join(flags) or 'unknown'}"


def gemm_gflops(library: str, n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` float32 ``n×n @ n×n`` GFLOP/s under ``'jax'`` (XLA) or ``'torch'``.

    The measured matmul roofline that throughput figures are set against; call it in the
    process (and with the thread settings) that runs the contender.
    """
    rng = np.random.RandomState(0)
    a, b = (rng.randn(n, n).astype(np.float32) for _ in range(2))
    if library == "jax":
        import jax
        import jax.numpy as jnp

        a, b = jnp.asarray(a), jnp.asarray(b)
        matmul = jax.jit(jnp.matmul)
        run = lambda: jax.block_until_ready(matmul(a, b))  # noqa: E731
    elif library == "torch":
        import torch

        a, b = torch.from_numpy(a), torch.from_numpy(b)
        run = lambda: torch.mm(a, b)  # noqa: E731
    else:
        raise ValueError(f"unknown library {library!r}; choose 'jax' or 'torch'")
    run()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (``uptime``), None where unavailable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Host description and library versions for result files (``load_average`` is
    the one at this call: the machine may be shared)."""
    import flax
    import jax
    import jaxlib
    import optax

    info = {
        "cpu_model": cpu_model(),
        "cpu_isa": isa_line(cpu_isa_flags()),
        "cpu_count": os.cpu_count(),
        "cpu_isa_flags": cpu_isa_flags(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [d.device_kind for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # glibc.malloc.hugetlb=1 backs large allocations with huge pages (see
        # docs/benchmarks.md: it removes ~2.4M page faults per dmformer_s CPU step).
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "numpy": np.__version__,
    }
    if extra:
        info.update(extra)
    return info


def peak_tflops(device_kind: str) -> float | None:
    """Known peak bf16 TFLOP/s for a JAX ``device_kind`` (None if unknown, e.g. CPUs)."""
    for name, peak in PEAK_BF16_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def random_variables(model, image_shape: tuple[int, ...], seed: int = 0) -> dict[str, Any]:
    """Variables for ``model`` with random values, built from ``jax.eval_shape``.

    Avoids compiling ``model.init`` (slow on CPU) and gives non-trivial activations:
    kernels N(0, 1/fan_in), layer scales U(0.5, 1.5), BN stats random. Returns a
    nested dict of float32 NumPy arrays.
    """
    import jax
    import jax.numpy as jnp

    rng = np.random.RandomState(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(image_shape, jnp.float32))

    def fill(path, leaf):
        name, shape = getattr(path[-1], "key", ""), leaf.shape
        if name == "kernel":
            return (rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        if name == "gamma":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 2.0, shape).astype(np.float32)
        base = 1.0 if name == "scale" else 0.0
        return (base + 0.1 * rng.randn(*shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def jax_fwd_and_fwd_bwd(fn: Callable, x, w, ct) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Zero-argument timers for ``fn(x, w)`` and for its output plus both gradients
    (``vjp`` with the cotangent ``ct``), each jitted and blocking."""
    import jax

    def forward_and_gradients(x, w, ct):
        # The output is returned too: a convolution's gradients do not need it, so
        # without it XLA drops the forward and "fwd+bwd" would time the backward alone
        # (the tables before 2026-11-28 did), unlike PyTorch's, which always runs it.
        y, vjp = jax.vjp(fn, x, w)
        return y, vjp(ct)

    fwd = jax.jit(fn)
    bwd = jax.jit(forward_and_gradients)
    return (lambda: jax.block_until_ready(fwd(x, w)), lambda: jax.block_until_ready(bwd(x, w, ct)))


def torch_fwd_and_fwd_bwd(
    fn: Callable, x: np.ndarray, w: np.ndarray, ct: np.ndarray, dtype: Any = None
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The same timers for a PyTorch conv ``fn(x, w)`` (forward under ``no_grad``).

    Takes the JAX-layout NumPy arrays (``x``/``ct`` NHWC, ``w`` HWIO) and gives
    ``fn`` NCHW / OIHW tensors, in ``dtype`` if given.
    """
    import torch

    def to_torch(a: np.ndarray, axes: tuple[int, ...]):
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(axes)))
        return t if dtype is None else t.to(dtype)

    x, w, ct = to_torch(x, (0, 3, 1, 2)), to_torch(w, (3, 2, 0, 1)), to_torch(ct, (0, 3, 1, 2))

    def fwd():
        with torch.no_grad():
            fn(x, w)

    def fwd_bwd():
        a, b = x.detach().requires_grad_(), w.detach().requires_grad_()
        torch.autograd.grad(fn(a, b), (a, b), ct)

    return fwd, fwd_bwd


def time_fwd_and_fwd_bwd(
    contenders: Mapping[str, tuple[Callable[[], Any], Callable[[], Any]]], reps: int, label: str
) -> dict[str, Any]:
    """Times every contender's (fwd, fwd_bwd) pair round-robin; prints and returns
    ``{'fwd': {name: Stats.as_dict()}, 'fwd_bwd': {...}}``."""
    out: dict[str, Any] = {}
    for i, name in enumerate(("fwd", "fwd_bwd")):
        stats = time_interleaved({n: c[i] for n, c in contenders.items()}, reps, warmup=1)
        out[name] = {n: s.as_dict() for n, s in stats.items()}
        for n, s in stats.items():
            print(f"{label} {name:7s} {n:18s} {1e3 * s.median:9.1f} ms ({1e3 * s.low:.1f}–{1e3 * s.high:.1f})", flush=True)
    return out


def update_docs(path: Path, tag: str, body: str) -> None:
    """Replaces the section between ``<!-- bench:TAG:start -->`` and ``:end`` (or appends it)."""
    start, end = f"<!-- bench:{tag}:start -->", f"<!-- bench:{tag}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def publish(results: Mapping[str, Any], table: str, tag: str, out: Path, docs: str | None = None) -> None:
    """Writes ``results`` as JSON to ``out``, prints the markdown ``table`` and, with
    ``docs``, replaces that file's ``bench:TAG`` section with it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table)
    print(f"wrote {out}")
    if docs:
        update_docs(Path(docs), tag, table)
        print(f"updated {docs} (section bench:{tag})")
