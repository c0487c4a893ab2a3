"""Input-pipeline throughput: our tf.data streams vs timm's PyTorch pipeline vs a JPEG
decode floor, in one run, on the same JPEGs.

Data: synthetic ImageNet-like JPEGs (tests/ilsvrc_fixture.py `natural_pixels`:
gradients, shapes, texture, a little noise; quality 90, 4:2:0) at ImageNet's typical
sizes, written as an ILSVRC2012 ``manual_dir`` and prepared by TFDS's own
``imagenet2012`` builder into ``--cache`` (kept for the next run). The same JPEG files
are extracted into a class-folder tree for timm.

Contenders (each timed for ``--reps`` repetitions of ``--batches-per-rep`` batches
after warm-up; median img/s, and images per CPU-second of the whole process tree,
which a shared machine disturbs far less than wall time):

- ours, train: ``make_train_iterator`` as an accelerator host runs it (tf.data private
  thread pool of N threads, single-threaded ops), the full recipe of
  configs/common.py: timm-rule crop decoded by ``decode_and_crop_jpeg`` with the
  accurate DCT, bicubic resize, flip, RandAugment rand-m9-mstd0.5-inc1, normalise,
  random erasing 0.25, mixup/cutmix and label smoothing; float32 out (as timm).
  Variants: the fast DCT, uint8 out (the TPU/GPU host default), and decode + crop +
  resize only (where the time goes).
- ours, eval: ``make_eval_iterator`` (accurate-DCT decode, resize, centre crop,
  normalise), read from the train split (more images than the small val split).
- decode floor: the fastest full JPEG decode on this CPU, one thread: PIL
  (libjpeg-turbo, accurate DCT) and ``tf.io.decode_jpeg`` (fast and accurate DCT).
- timm (``--timm-python``: an interpreter with timm/torchvision, see
  benchmarks/timm_input.py): ``create_transform`` with the same recipe, PIL decode,
  DataLoader with 1 and 2 workers (mixup is not part of timm's loader: it runs on the
  device in timm's train.py).

Usage (the table in docs/benchmarks.md)::

    python benchmarks/bench_input.py --cache /tmp/bench_input --timm-python /work/venv-timm/bin/python \\
        --docs docs/benchmarks.md
    python benchmarks/bench_input.py --smoke       # 16 images, 1 rep; timm only if --timm-python
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The ILSVRC manual_dir writer the TFDS tests use: one copy of the archive layout the
# real builder reads, checked by tests/test_imagenet_tfds.py.
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

# ImageNet's usual (height, width), weighted by repetition (INFERRED from the data set's
# well-known make-up: most images are 500 px on the long side, ~3:4 landscape). Mean
# ~195k pixels; ImageNet's mean is ~400x350 to 470x390 depending on the count.
IMAGENET_SIZES = (
    [(375, 500)] * 8 + [(333, 500)] * 3 + [(500, 375)] * 2 + [(500, 500)] * 2
    + [(500, 333), (400, 500), (480, 640), (300, 400)]
)
DATA_VERSION = 1  # bump when the generated images change


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=None, help="folder for the generated JPEGs and the prepared TFDS data "
                                                 "(reused by the next run); required except with --smoke")
    p.add_argument("--timm-python", default=None, help="python with timm + torchvision (not a project "
                                                       "dependency); without it the timm contender is skipped")
    p.add_argument("--val-images", type=int, default=64, help="validation JPEGs; their synsets are the classes")
    p.add_argument("--images-per-class", type=int, default=5, help="training JPEGs per class")
    p.add_argument("--threads", default="1,2", help="tf.data threads / DataLoader workers to measure")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batches-per-rep", type=int, default=8)
    p.add_argument("--warmup-batches", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON result (default benchmarks/results/input_cpu.json; "
                                               "--smoke: none)")
    p.add_argument("--docs", default=None, help="markdown file whose bench:input section is replaced")
    p.add_argument("--smoke", action="store_true", help="8 classes x 2 images, small batches, 1 rep, 1 thread, "
                                                         "no train variants (fast DCT, uint8, crop only)")
    args = p.parse_args(argv)
    if args.smoke:
        args.val_images, args.images_per_class = 8, 2
        args.threads = "1" if args.threads == p.get_default("threads") else args.threads
        args.batch, args.batches_per_rep, args.warmup_batches, args.reps = 4, 2, 1, 1
    elif args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / "input_cpu.json")
    if not args.cache and not args.smoke:
        _bad_input("--cache DIR is required: the generated JPEGs and the prepared TFDS data set are kept there")
    try:
        args.thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        _bad_input(f"--threads {args.threads!r} is not a comma-separated list of integers, e.g. 1,2")
    for name in ("val_images", "images_per_class", "batch", "batches_per_rep", "reps"):
        if getattr(args, name) < 1:
            _bad_input(f"--{name.replace('_', '-')} must be >= 1")
    if args.images_per_class < 2:
        _bad_input("--images-per-class must be >= 2 (the first class holds a greyscale and a CMYK JPEG)")
    if min(args.thread_counts) < 1:
        _bad_input("--threads must be >= 1")
    if args.timm_python and not os.access(args.timm_python, os.X_OK):
        _bad_input(f"--timm-python {args.timm_python!r} is not an executable; create the venv as "
                   "docs/benchmarks.md says or leave the flag out")
    return args


def _bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ------------------------------------------------------------------------------ data


def prepare_data(cache: Path, args) -> dict[str, Any]:
    """Writes (once) the ILSVRC manual_dir, prepares it with TFDS's imagenet2012 builder
    and extracts the training JPEGs into a class-folder tree. Returns paths and stats."""
    import ilsvrc_fixture

    from configs.common import get_base_config
    import dmformer_jax.data as data

    tag = f"v{DATA_VERSION}_val{args.val_images}_ipc{args.images_per_class}"
    root = cache / tag
    manual, tfds_dir, jpeg_root = root / "manual", root / "tfds", root / "jpeg" / "train"
    marker = root / "written.json"
    if not marker.exists():
        start = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        synsets = tuple(dict.fromkeys(ilsvrc_fixture.validation_labels(args.val_images)))
        written = ilsvrc_fixture.write_tiny_ilsvrc(
            manual, synsets=synsets, images_per_class=args.images_per_class, val_images=args.val_images,
            seed=0, natural=True, image_sizes=IMAGENET_SIZES,
        )
        print(f"wrote {len(written['train_labels'])} + {len(written['val_labels'])} JPEGs in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        marker.write_text(json.dumps({"synsets": synsets, "train": len(written["train_labels"])}))
    config = get_base_config()
    config.data.data_dir, config.data.manual_dir = str(tfds_dir), str(manual)
    start = time.perf_counter()
    builder = data.get_builder(config)  # TFDS's imagenet2012 builder prepares it the first time
    prepare_s = time.perf_counter() - start
    if not (jpeg_root / ".done").exists():
        shutil.rmtree(jpeg_root, ignore_errors=True)
        with tarfile.open(manual / "ILSVRC2012_img_train.tar") as outer:
            for member in outer:
                wnid = member.name[: -len(".tar")]
                with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                    (jpeg_root / wnid).mkdir(parents=True, exist_ok=True)
                    for m in inner:
                        (jpeg_root / wnid / m.name).write_bytes(inner.extractfile(m).read())
        (jpeg_root / ".done").write_text("")
    files = sorted(jpeg_root.glob("*/*.JPEG"))
    jpegs = [f.read_bytes() for f in files]
    from PIL import Image

    pixels = [np.prod(Image.open(io.BytesIO(b)).size) for b in jpegs]
    return {
        "root": str(root), "tfds_data_dir": str(tfds_dir), "manual_dir": str(manual), "jpeg_root": str(jpeg_root),
        "jpegs": jpegs, "prepare_s": prepare_s,
        "stats": {
            "train_images": int(builder.info.splits["train"].num_examples),
            "validation_images": int(builder.info.splits["validation"].num_examples),
            "jpeg_files": len(files),
            "mean_pixels": float(np.mean(pixels)),
            "mean_kbytes": float(np.mean([len(b) for b in jpegs]) / 1024),
            "bytes_per_pixel": float(np.sum([len(b) for b in jpegs]) / np.sum(pixels)),
        },
    }


# ------------------------------------------------------------------------ timing


def _time_batches(next_batch: Callable[[], int], warmup: int, per_rep: int, reps: int) -> dict[str, Any]:
    """Times ``reps`` runs of ``per_rep`` calls of ``next_batch`` (which returns the
    number of images it produced) after ``warmup`` calls: wall and process CPU time."""
    for _ in range(warmup):
        next_batch()
    wall, cpu, images = [], [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        n = sum(next_batch() for _ in range(per_rep))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        images.append(n)
    return _summary(wall, cpu, images)


def _summary(wall: list[float], cpu: list[float], images: list[int]) -> dict[str, Any]:
    rates = [n / t for n, t in zip(images, wall)]
    cpu_rates = [n / t for n, t in zip(images, cpu)]
    return {
        "wall_s": wall, "cpu_s": cpu, "images": images,
        "img_per_s": statistics.median(rates), "img_per_s_min": min(rates), "img_per_s_max": max(rates),
        "img_per_cpu_s": statistics.median(cpu_rates),
        "cores_used": statistics.median([c / w for c, w in zip(cpu, wall)]),
    }


def _config(prepared: dict, args, threads: int, **augment):
    from configs.common import get_base_config

    config = get_base_config()
    config.model.name = "dmformer_s"
    config.data.data_dir, config.data.manual_dir = prepared["tfds_data_dir"], prepared["manual_dir"]
    config.data.image_size = args.res
    config.data.transfer_dtype = augment.pop("transfer_dtype", "float32")
    config.data.private_threadpool_size = threads
    config.data.max_intra_op_parallelism = 1
    config.data.eval_split = "train"  # eval speed does not depend on which images; train has more
    config.batch_size = config.eval_batch_size = args.batch
    for key, value in augment.items():
        config.augment[key] = value
    return config


def time_ours_train(prepared, args, threads: int, dct: str = "INTEGER_ACCURATE", **augment) -> dict[str, Any]:
    import dmformer_jax.data as data
    from dmformer_jax.data import augment as aug

    config = _config(prepared, args, threads, **augment)
    saved = aug.DCT_METHOD
    aug.DCT_METHOD = dct  # read when the decode function is traced, inside the next call
    try:
        it = data.make_train_iterator(config, start_step=0, process_index=0, process_count=1)
        first = next(it)
    finally:
        aug.DCT_METHOD = saved
    assert first["image"].shape == (args.batch, args.res, args.res, 3), first["image"].shape

    def next_batch() -> int:
        return len(next(it)["image"])

    out = _time_batches(next_batch, args.warmup_batches, args.batches_per_rep, args.reps)
    out["image_dtype"] = str(first["image"].dtype)
    return out


def time_ours_eval(prepared, args, threads: int) -> dict[str, Any]:
    """One fresh pass over the split per repetition, timed from its first batch (so the
    pipeline start-up, paid once per eval of 50k images, is left out)."""
    import dmformer_jax.data as data

    config = _config(prepared, args, threads)
    summary, _ = time_eval_passes(lambda: data.make_eval_iterator(config, process_index=0, process_count=1),
                                  args.reps)
    return summary


def time_eval_passes(make_iterator: Callable[[], Iterator[dict]], reps: int) -> tuple[dict[str, Any], dict]:
    """``reps`` fresh passes of ``make_iterator()`` after one warm-up pass, each timed
    from its first batch (counting the ``mask``-ed images); returns the summary and the
    first batch."""
    wall, cpu, images = [], [], []
    for rep in range(reps + 1):
        it = make_iterator()
        first = next(it)
        c0, t0, n = time.process_time(), time.perf_counter(), 0
        for batch in it:
            n += int(batch["mask"].sum())
        if rep:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            images.append(n)
    return _summary(wall, cpu, images), first


def _single_thread_options():
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return options


def time_tf_decode(jpegs: list[bytes], args, dct: str) -> dict[str, Any]:
    """Full ``tf.io.decode_jpeg`` of every JPEG, one tf.data thread."""
    import tensorflow as tf

    chunk = 16  # elements per Python step: per-element iterator overhead out of the way
    ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
    ds = ds.map(lambda b: tf.io.decode_jpeg(b, channels=3, dct_method=dct)[0, 0, 0]).batch(chunk)
    it = iter(ds.with_options(_single_thread_options()).prefetch(2))
    per_rep = max(1, len(jpegs) // chunk)
    return _time_batches(lambda: len(next(it)), 2, per_rep, args.reps)


def time_pil_decode(jpegs: list[bytes], args) -> dict[str, Any]:
    """Full PIL decode (libjpeg-turbo, accurate DCT) of every JPEG, one thread."""
    from PIL import Image

    def decode_all() -> int:
        for b in jpegs:
            image = Image.open(io.BytesIO(b))
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
        return len(jpegs)

    return _time_batches(decode_all, 1, 1, args.reps)


def run_timm(prepared, args, mode: str) -> dict[str, Any]:
    from configs.common import get_base_config
    from dmformer_jax import recipe

    base = get_base_config()
    cmd = [
        args.timm_python, str(ROOT / "benchmarks" / "timm_input.py"), "--root", prepared["jpeg_root"],
        "--mode", mode, "--workers", args.threads, "--batch", str(args.batch), "--res", str(args.res),
        "--crop-pct", str(recipe.eval_crop_pct(None, "dmformer_s")),
        "--mean", ",".join(map(str, base.data.mean)), "--std", ",".join(map(str, base.data.std)),
        "--re-prob", str(base.augment.random_erasing),
        "--mixup-alpha", str(base.augment.mixup_alpha), "--cutmix-alpha", str(base.augment.cutmix_alpha),
        "--switch-prob", str(base.augment.mix_switch_prob), "--smoothing", str(base.augment.label_smoothing),
        "--batches-per-rep", str(args.batches_per_rep), "--warmup-batches", str(args.warmup_batches),
        "--reps", str(args.reps),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"timm contender failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    sys.stderr.write(proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for run in result["runs"].values():
        run.update(_summary(run["wall_s"], run["cpu_s"], [run["images_per_rep"]] * len(run["wall_s"])))
    return result


# ------------------------------------------------------------------------ report


def _rate(r: dict | None) -> str:
    if not r:
        return "—"
    return f"{r['img_per_s']:.1f} ({r['img_per_s_min']:.1f}–{r['img_per_s_max']:.1f})"


ROWS = (
    ("ours_train_t{t}", "ours, train (full recipe, float32 out), {t} thread(s)"),
    ("ours_train_uint8_t{t}", "ours, train, uint8 out (TPU/GPU host default), {t} thread(s)"),
    ("ours_train_fastdct_t{t}", "ours, train, fast DCT (INTEGER_FAST), {t} thread(s)"),
    ("ours_train_croponly_t{t}", "ours, train, decode + crop + resize + normalise only, {t} thread(s)"),
    ("timm_train_w{t}", "timm train transform, DataLoader {t} worker(s)"),
    ("timm_train_prefetcher_w{t}", "timm train, GPU-loader path (uint8 out, FastCollateMixup on the host, "
                                   "erasing + normalising left to the device), DataLoader {t} worker(s)"),
    ("ours_eval_t{t}", "ours, eval, {t} thread(s)"),
    ("timm_eval_w{t}", "timm eval transform, DataLoader {t} worker(s)"),
    ("decode_pil_t{t}", "decode floor: PIL (accurate DCT), {t} thread"),
    ("decode_tf_fast_t{t}", "decode floor: tf.io.decode_jpeg fast DCT, {t} thread"),
    ("decode_tf_accurate_t{t}", "decode: tf.io.decode_jpeg accurate DCT, {t} thread"),
)


def ratios(c: dict[str, dict]) -> dict[str, float]:
    out: dict[str, float] = {}

    def ratio(name, a, b, key="img_per_s"):
        if a in c and b in c:
            out[name] = c[a][key] / c[b][key]

    floors = [k for k in ("decode_pil_t1", "decode_tf_fast_t1") if k in c]
    if floors:
        best = max(floors, key=lambda k: c[k]["img_per_cpu_s"])
        out["decode_floor"] = best  # type: ignore[assignment]
        ratio("train_t1_over_decode_floor", "ours_train_t1", best)
        ratio("train_t1_over_decode_floor_per_cpu_s", "ours_train_t1", best, "img_per_cpu_s")
    ratio("train_t1_over_timm_w1", "ours_train_t1", "timm_train_w1")
    ratio("train_t1_over_timm_w1_per_cpu_s", "ours_train_t1", "timm_train_w1", "img_per_cpu_s")
    ratio("train_t2_over_timm_w2", "ours_train_t2", "timm_train_w2")
    # Like for like with timm's GPU path: uint8 out, mixup on the host in both.
    ratio("train_uint8_t1_over_timm_prefetcher_w1_per_cpu_s", "ours_train_uint8_t1", "timm_train_prefetcher_w1",
          "img_per_cpu_s")
    ratio("eval_t1_over_timm_w1", "ours_eval_t1", "timm_eval_w1")
    ratio("eval_t1_over_timm_w1_per_cpu_s", "ours_eval_t1", "timm_eval_w1", "img_per_cpu_s")
    ratio("train_t2_over_t1", "ours_train_t2", "ours_train_t1")
    ratio("accurate_over_fast_dct_train_per_cpu_s", "ours_train_t1", "ours_train_fastdct_t1", "img_per_cpu_s")
    ratio("accurate_over_fast_dct_decode_per_cpu_s", "decode_tf_accurate_t1", "decode_tf_fast_t1",
          "img_per_cpu_s")
    return out


def markdown(result: dict) -> str:
    m, d, c, r = result["machine"], result["data"], result["contenders"], result["ratios"]
    lines = [
        f"Run {result['date']} (`benchmarks/bench_input.py`): batch {result['batch']}, {result['res']}×"
        f"{result['res']}, {result['reps']} repetitions of {result['batches_per_rep']} batches after "
        f"{result['warmup_batches']} warm-up batches (median img/s, min–max).",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['platform']}; TensorFlow {m['tensorflow']}, "
        f"TFDS {m['tfds']}, Pillow {m['pillow']} (libjpeg-turbo: {m['pil_libjpeg_turbo']})"
        + (f"; timm {result['timm']['timm']}, torch {result['timm']['torch']}, torchvision "
           f"{result['timm']['torchvision']}" if (result.get("timm") or {}).get("timm") else "; timm: not run")
        + ".",
        "",
        f"ISA: {m['isa']}.",
        "",
        f"Load average (1, 5, 15 min) at the start: {result['load_average_start']}, at the end: "
        f"{result['load_average_end']}. The machine is shared with other jobs: wall-clock img/s is "
        "what this process got of the cores; img per CPU-second counts only the CPU time the "
        "pipeline's own process tree used, and is the steadier per-core figure.",
        "",
        f"Data: {d['train_images']} train JPEGs (+{d['validation_images']} val) prepared by TFDS's imagenet2012 "
        f"builder; mean {d['mean_pixels'] / 1000:.0f}k pixels, {d['mean_kbytes']:.0f} KB, "
        f"{d['bytes_per_pixel']:.2f} bytes/pixel (ImageNet: ~0.6).",
        "",
        "| pipeline | img/s | img per CPU-s | cores used |",
        "|---|---|---|---|",
    ]
    threads = result["threads"]
    for key, label in ROWS:
        for t in (threads if "decode" not in key else [1]):
            name = key.format(t=t)
            if name in c:
                lines.append(f"| {label.format(t=t)} | {_rate(c[name])} | {c[name]['img_per_cpu_s']:.1f} | "
                             f"{c[name]['cores_used']:.2f} |")
    lines.append("")

    def fmt(key, suffix="×"):
        return f"{r[key]:.2f}{suffix}" if key in r else "—"

    lines += [
        f"- ours ÷ timm, train, 1 thread vs 1 worker: {fmt('train_t1_over_timm_w1')} img/s, "
        f"{fmt('train_t1_over_timm_w1_per_cpu_s')} per CPU-second (target ≥ 1.5× per core); "
        f"2 threads vs 2 workers: {fmt('train_t2_over_timm_w2')}.",
        f"- ours uint8 ÷ timm's GPU-loader path (both uint8 out, mixup on the host), 1 thread vs 1 worker: "
        f"{fmt('train_uint8_t1_over_timm_prefetcher_w1_per_cpu_s')} per CPU-second.",
        f"- ours ÷ timm, eval, 1 thread vs 1 worker: {fmt('eval_t1_over_timm_w1')} img/s, "
        f"{fmt('eval_t1_over_timm_w1_per_cpu_s')} per CPU-second.",
        f"- ours train ÷ decode floor ({r.get('decode_floor', '—')}): {fmt('train_t1_over_decode_floor')} img/s, "
        f"{fmt('train_t1_over_decode_floor_per_cpu_s')} per CPU-second (target ≥ 0.5×, within 2× of the floor).",
        f"- Accurate DCT ÷ fast DCT, per CPU-second: train pipeline {fmt('accurate_over_fast_dct_train_per_cpu_s')}, "
        f"full decode {fmt('accurate_over_fast_dct_decode_per_cpu_s')}.",
        f"- 2 threads ÷ 1 thread, train: {fmt('train_t2_over_t1')} img/s.",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------- main


def run_in_cache(args, run: Callable[[Any, Path], dict[str, Any]], prefix: str) -> dict[str, Any]:
    """``run(args, cache)`` with ``--cache``, or (``--smoke`` without it) a temporary
    folder removed afterwards."""
    if args.cache:
        return run(args, Path(args.cache))
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        return run(args, Path(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def record_contender(contenders: dict[str, dict], name: str, fn: Callable[[], dict]) -> None:
    """Runs ``fn`` (a timing), stores its record as ``contenders[name]`` with the load
    average at its start, and prints one progress line."""
    load = load_average()
    start = time.perf_counter()
    contenders[name] = r = fn()
    r["load_average"] = load
    print(f"{name:28s} {r['img_per_s']:8.1f} img/s  {r['img_per_cpu_s']:8.1f} img/CPU-s  "
          f"cores {r['cores_used']:.2f}  ({time.perf_counter() - start:.0f} s, load {load})", flush=True)


def main(argv=None) -> dict[str, Any]:
    return run_in_cache(parse_args(argv), _run, "bench_input_smoke_")


def _run(args, cache: Path) -> dict[str, Any]:
    import PIL
    import PIL.features
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from dmformer_jax import bench
    from dmformer_jax.data import pipeline

    # Measure the accelerator-host path: the config's private thread pool and
    # single-threaded ops apply (on a CPU-only host the trainer leaves tf.data on TF's
    # shared pools, next to XLA). transfer_dtype is set explicitly per contender.
    pipeline._accelerator_host = lambda: True

    load_start = load_average()
    prepared = prepare_data(cache, args)
    print(f"data: {prepared['stats']} (prepare/open {prepared['prepare_s']:.1f} s)", flush=True)
    contenders: dict[str, dict] = {}

    def record(name: str, fn: Callable[[], dict]) -> None:
        record_contender(contenders, name, fn)

    timm_info = None
    if args.timm_python:
        for mode in ("train", "train_prefetcher", "eval"):
            load = load_average()
            try:
                result = run_timm(prepared, args, mode)
            except RuntimeError as e:  # keep our figures; the error goes into the results
                print(e, file=sys.stderr, flush=True)
                timm_info = dict(timm_info or {}, **{f"{mode}_error": str(e)[-2000:]})
                continue
            timm_info = dict(timm_info or {}, **{k: result[k] for k in ("timm", "torch", "torchvision", "pillow",
                                                                        "libjpeg_turbo")})
            timm_info[f"{mode}_transform"] = result["transform"]
            for w, run in result["runs"].items():
                run["load_average"] = load
                contenders[f"timm_{mode}_w{w}"] = run
                print(f"timm_{mode}_w{w:<21s} {run['img_per_s']:8.1f} img/s  {run['img_per_cpu_s']:8.1f} img/CPU-s  "
                      f"cores {run['cores_used']:.2f}", flush=True)
    else:
        print("timm contender skipped: pass --timm-python PATH (an interpreter with timm and torchvision, "
              "see docs/benchmarks.md)", flush=True)

    for t in args.thread_counts:
        record(f"ours_train_t{t}", lambda: time_ours_train(prepared, args, t))
    if not args.smoke:  # each traces RandAugment again (seconds)
        record("ours_train_fastdct_t1", lambda: time_ours_train(prepared, args, 1, dct="INTEGER_FAST"))
        record("ours_train_uint8_t1", lambda: time_ours_train(prepared, args, 1, transfer_dtype="uint8"))
        record("ours_train_croponly_t1", lambda: time_ours_train(
            prepared, args, 1, hflip=False, randaugment=False, color_jitter=0.0, random_erasing=0.0,
            mixup_alpha=0.0, cutmix_alpha=0.0))
    for t in args.thread_counts:
        record(f"ours_eval_t{t}", lambda: time_ours_eval(prepared, args, t))
    record("decode_pil_t1", lambda: time_pil_decode(prepared["jpegs"], args))
    record("decode_tf_fast_t1", lambda: time_tf_decode(prepared["jpegs"], args, "INTEGER_FAST"))
    record("decode_tf_accurate_t1", lambda: time_tf_decode(prepared["jpegs"], args, "INTEGER_ACCURATE"))

    flags = bench.cpu_isa_flags()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": bench.machine_info({
            "tensorflow": tf.__version__, "tfds": tfds.__version__, "pillow": PIL.__version__,
            "pil_libjpeg_turbo": bool(PIL.features.check_feature("libjpeg_turbo")), "isa": bench.isa_line(flags),
        }),
        "timm": timm_info,
        "data": prepared["stats"],
        "batch": args.batch, "res": args.res, "reps": args.reps, "batches_per_rep": args.batches_per_rep,
        "warmup_batches": args.warmup_batches, "threads": args.thread_counts, "smoke": args.smoke,
        "load_average_start": load_start, "load_average_end": load_average(),
        "contenders": contenders,
    }
    result["ratios"] = ratios(contenders)
    table = markdown(result)
    if args.out:
        bench.publish(result, table, "input", Path(args.out), args.docs)
    else:
        print(table)
    return result


if __name__ == "__main__":
    main()
