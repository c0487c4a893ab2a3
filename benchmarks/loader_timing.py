"""Timing a torch DataLoader the way the PyTorch contenders of the input benchmarks
(timm_input.py, mmseg_input.py) do. Runs in their interpreter: torch only, nothing
from this project.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except OSError:
        return 0.0


class Forever:
    """Shuffled passes over ``n`` indices, forever (no epoch-boundary stall in the
    timed window; a real epoch is thousands of batches long)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, seed

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.n, generator=g).tolist()


def time_loader(dataset, args, workers: int, **loader_kwargs) -> tuple[dict[str, Any], Any]:
    """Times ``args.reps`` runs of ``args.batches_per_rep`` batches of a DataLoader with
    ``workers`` worker processes (after ``args.warmup_batches``): wall time and the CPU
    time of this process plus its workers. Returns the run record and the last batch."""
    import torch

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, sampler=Forever(len(dataset)), num_workers=workers,
        drop_last=True, persistent_workers=workers > 0, **loader_kwargs,
    )
    it = iter(loader)
    batch = None
    for _ in range(args.warmup_batches):
        batch = next(it)
    pids = [w.pid for w in getattr(it, "_workers", [])]

    def cpu() -> float:
        return time.process_time() + sum(proc_cpu_s(pid) for pid in pids)

    wall, cpu_s = [], []
    for _ in range(args.reps):
        c0, t0 = cpu(), time.perf_counter()
        for _ in range(args.batches_per_rep):
            batch = next(it)
        wall.append(time.perf_counter() - t0)
        cpu_s.append(cpu() - c0)
    images = args.batch * args.batches_per_rep
    run = {"workers": workers, "images_per_rep": images, "wall_s": wall, "cpu_s": cpu_s,
           "img_per_s": images / statistics.median(wall), "img_per_cpu_s": images / statistics.median(cpu_s),
           "worker_pids_seen": len(pids)}
    del it, loader
    return run, batch
