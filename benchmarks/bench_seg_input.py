"""Segmentation input-pipeline throughput: our tf.data streams vs an mmseg-style
OpenCV/NumPy pipeline vs a JPEG + PNG decode floor, in one run, on the same files.

The segmentation twin of benchmarks/bench_input.py (same timing, figures and report;
its helpers are imported from there).

Data: ADE20K-like examples (tests/ade20k_fixture.py: `natural_pixels` JPEGs at quality
90 and region-structured annotation PNGs of 0..150) at ADE20K's typical sizes (mostly
683x512 / 512x683, some square, wider or larger), written as an
``ADEChallengeData2016.zip`` in a ``manual_dir`` and prepared by our ``ade20k`` TFDS
builder into ``--cache`` (kept for the next run). The same JPEG/PNG files are extracted
from the zip for the mmseg-style contender and the decode floors.

Contenders (each timed for ``--reps`` repetitions of ``--batches-per-rep`` batches
after warm-up; median img/s, and images per CPU-second of the whole process tree):

- ours, train: ``dmformer_jax.data.segmentation.make_train_iterator`` as an
  accelerator host runs it (tf.data private thread pool of N threads, single-threaded
  ops) with the ADE20K recipe of configs/seg_common.py: decode (accurate DCT) + PNG,
  reduce_zero_label, random rescale to (2048, 512) x U[0.5, 2], 512 crop with
  cat_max_ratio 0.75, flip, PhotoMetricDistortion, normalise, pad; float32 out (as
  mmseg) and uint8 out (the TPU/GPU host default). Variants (1 thread) for where the
  time goes: without PhotoMetricDistortion, without the cat_max_ratio crop test, and
  decode + rescale + crop + normalise + pad only.
- ours, eval: ``make_eval_iterator`` over the validation split (AlignResize to
  (2048, 512) and multiples of 32, normalise, bucketed padding; the label at its
  original size).
- mmseg-style (``--mmseg-python``: an interpreter with torch and opencv-python, see
  benchmarks/mmseg_input.py): our transcription of mmseg 0.x's ADE20K train and test
  pipelines (cv2 decode, cv2 resize / HSV, NumPy crop test) in a DataLoader with 1 and
  2 workers.
- decode floor, one thread: image JPEG decode + annotation PNG decode: TF
  (``tf.io.decode_jpeg`` fast / accurate DCT + ``decode_png``), PIL, and cv2 (in the
  mmseg interpreter, when given).

Usage (the table in docs/benchmarks.md)::

    python benchmarks/bench_seg_input.py --cache /tmp/bench_seg_input --mmseg-python /work/venv-timm/bin/python \\
        --docs docs/benchmarks.md
    python benchmarks/bench_seg_input.py --smoke       # 8 small images, 1 rep; mmseg only if --mmseg-python
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

# bench_input puts the repository and tests/ on sys.path and quietens TF.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_input import (  # noqa: E402
    ROOT,
    _bad_input,
    _rate,
    _single_thread_options,
    _summary,
    _time_batches,
    load_average,
    record_contender,
    run_in_cache,
    time_eval_passes,
)

import numpy as np  # noqa: E402

DATA_VERSION = 2  # bump when the generated examples change


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=None, help="folder for the generated zip, the prepared TFDS data and the "
                                                 "extracted files (reused by the next run); required except with "
                                                 "--smoke")
    p.add_argument("--mmseg-python", default=None, help="python with torch + opencv-python (not a project "
                                                        "dependency); without it the mmseg-style contender and "
                                                        "the cv2 decode floor are skipped")
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--val-images", type=int, default=64)
    p.add_argument("--threads", default="1,2", help="tf.data threads / DataLoader workers to measure")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--res", type=int, default=512, help="training crop side S (train/eval scale (4S, S))")
    p.add_argument("--batches-per-rep", type=int, default=4)
    p.add_argument("--warmup-batches", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON result (default benchmarks/results/seg_input_cpu.json; "
                                               "--smoke: none)")
    p.add_argument("--docs", default=None, help="markdown file whose bench:seg_input section is replaced")
    p.add_argument("--smoke", action="store_true", help="8 + 4 quarter-size images, 128 crops, batch 2, 1 rep, "
                                                         "1 thread, no train variants")
    args = p.parse_args(argv)
    args.size_divisor = 1
    if args.smoke:
        args.train_images, args.val_images, args.res, args.size_divisor = 8, 4, 128, 4
        args.threads = "1" if args.threads == p.get_default("threads") else args.threads
        args.batch, args.batches_per_rep, args.warmup_batches, args.reps = 2, 2, 1, 1
    elif args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / "seg_input_cpu.json")
    if not args.cache and not args.smoke:
        _bad_input("--cache DIR is required: the generated ADEChallengeData2016.zip and the prepared TFDS data "
                   "are kept there")
    try:
        args.thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        _bad_input(f"--threads {args.threads!r} is not a comma-separated list of integers, e.g. 1,2")
    if min(args.thread_counts) < 1:
        _bad_input("--threads must be >= 1")
    for name in ("train_images", "val_images", "batch", "batches_per_rep", "reps"):
        if getattr(args, name) < 1:
            _bad_input(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_batches < 0:
        _bad_input("--warmup-batches must be >= 0")
    if args.res < 32:
        _bad_input(f"--res {args.res} is too small; use the crop side, e.g. 512")
    if args.train_images < args.batch:
        _bad_input(f"--train-images {args.train_images} is fewer than one --batch {args.batch}")
    if args.mmseg_python and not os.access(args.mmseg_python, os.X_OK):
        _bad_input(f"--mmseg-python {args.mmseg_python!r} is not an executable; create the venv as "
                   "docs/benchmarks.md says or leave the flag out")
    return args


# ------------------------------------------------------------------------------ data


def prepare_data(cache: Path, args) -> dict[str, Any]:
    """Writes (once) the ADE20K-like zip, prepares it with our ade20k builder and
    extracts its JPEGs/PNGs into ``files/{images,annotations}/{training,validation}``."""
    import ade20k_fixture

    import dmformer_jax.data.segmentation as seg

    tag = f"v{DATA_VERSION}_train{args.train_images}_val{args.val_images}_div{args.size_divisor}"
    root = cache / tag
    manual, tfds_dir, files = root / "manual", root / "tfds", root / "files"
    marker = root / "written.json"
    if not marker.exists():
        start = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        manual.mkdir(parents=True)
        sizes = [(h // args.size_divisor, w // args.size_divisor) for h, w in ade20k_fixture.ADE20K_SIZES]
        ade20k_fixture.write_ade20k_like(manual, train=args.train_images, val=args.val_images, seed=0, sizes=sizes)
        print(f"wrote {args.train_images} + {args.val_images} examples in {time.perf_counter() - start:.0f} s",
              flush=True)
        marker.write_text(json.dumps({"train": args.train_images, "val": args.val_images}))
    config = _config({"tfds_data_dir": str(tfds_dir), "manual_dir": str(manual)}, args, 1)
    start = time.perf_counter()
    builder = seg.get_builder(config)  # our ade20k builder prepares it the first time
    prepare_s = time.perf_counter() - start
    if not (files / ".done").exists():
        shutil.rmtree(files, ignore_errors=True)
        prefix = f"{ade20k_fixture.ROOT}/"
        with zipfile.ZipFile(manual / ade20k_fixture.ARCHIVE) as z:
            for name in z.namelist():
                if name.endswith((".jpg", ".png")):
                    target = files / name[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        (files / ".done").write_text("")
    from PIL import Image

    pairs = [(p, files / "annotations" / "training" / (p.stem + ".png"))
             for p in sorted((files / "images" / "training").glob("*.jpg"))]
    blobs = [(j.read_bytes(), a.read_bytes()) for j, a in pairs]
    pixels = [int(np.prod(Image.open(io.BytesIO(j)).size)) for j, _ in blobs]
    return {
        "root": str(root), "tfds_data_dir": str(tfds_dir), "manual_dir": str(manual), "files": str(files),
        "blobs": blobs, "prepare_s": prepare_s,
        "stats": {
            "train_images": int(builder.info.splits["train"].num_examples),
            "validation_images": int(builder.info.splits["validation"].num_examples),
            "mean_pixels": float(np.mean(pixels)),
            "mean_jpeg_kbytes": float(np.mean([len(j) for j, _ in blobs]) / 1024),
            "jpeg_bytes_per_pixel": float(sum(len(j) for j, _ in blobs) / sum(pixels)),
            "png_bytes_per_pixel": float(sum(len(a) for _, a in blobs) / sum(pixels)),
        },
    }


# ------------------------------------------------------------------------ timing


def _config(prepared: dict, args, threads: int, transfer_dtype: str = "float32", **augment):
    """The ADE20K Semantic FPN recipe (configs/seg_common.py) at crop ``args.res``."""
    from configs.seg_common import get_seg_config

    config = get_seg_config("fpn", "dmformer_s")
    config.data.data_dir, config.data.manual_dir = prepared["tfds_data_dir"], prepared["manual_dir"]
    config.data.image_size = args.res
    config.data.transfer_dtype = transfer_dtype
    config.data.private_threadpool_size = threads
    config.data.max_intra_op_parallelism = 1
    config.data.eval_split = "validation"
    config.batch_size = config.eval_batch_size = args.batch
    for key, value in augment.items():
        config.augment[key] = value
    return config


def time_ours_train(prepared, args, threads: int, transfer_dtype: str = "float32", **augment) -> dict[str, Any]:
    import dmformer_jax.data.segmentation as seg

    config = _config(prepared, args, threads, transfer_dtype, **augment)
    it = seg.make_train_iterator(config, start_step=0, process_index=0, process_count=1)
    first = next(it)
    assert first["image"].shape == (args.batch, args.res, args.res, 3), first["image"].shape
    assert first["label"].shape == (args.batch, args.res, args.res), first["label"].shape

    def next_batch() -> int:
        return len(next(it)["image"])

    out = _time_batches(next_batch, args.warmup_batches, args.batches_per_rep, args.reps)
    out["image_dtype"] = str(first["image"].dtype)
    return out


def time_ours_eval(prepared, args, threads: int) -> dict[str, Any]:
    """One fresh pass over the validation split per repetition, timed from its first
    batch (the start-up, paid once per evaluation of 2,000 images, is left out)."""
    import dmformer_jax.data.segmentation as seg

    config = _config(prepared, args, threads)
    out, first = time_eval_passes(lambda: seg.make_eval_iterator(config, process_index=0, process_count=1),
                                  args.reps)
    if not sum(out["images"]):
        raise RuntimeError(f"the eval split has one batch only (batch {args.batch}); use more --val-images")
    out["first_batch_image_shape"] = list(first["image"].shape)
    return out


STAGES = ("decode", "rescale", "crop", "flip", "photometric", "normalise_pad")


def time_ours_stages(prepared, args) -> dict[str, dict[str, Any]]:
    """Where the time of one training example goes: the recipe's steps (the same
    functions as `train_example`, with its seeds) cut after each of STAGES, one
    tf.data thread, one scalar out per example (no batching or transfer).
    Stage k's cost is the difference between cuts k and k - 1."""
    import tensorflow as tf

    from dmformer_jax.data import augment as aug
    from dmformer_jax.data.segmentation import pipeline as sp
    from dmformer_jax.data.segmentation import transforms as T

    config = _config(prepared, args, 1)
    builder = sp.get_builder(config)
    f = sp.seg_fields(config, builder)
    records = sp._split_records(builder, config.data.train_split, config)
    root = tf.constant([int(config.seed), 0], tf.int64)

    def upto(stage: int):
        def fn(pos, jpeg, png):
            image = tf.cast(aug.decode_image(jpeg), tf.float32)
            label = tf.cast(tf.io.decode_png(png, channels=1)[..., 0], tf.int32)
            s = aug.split_seed(aug.fold_seed(root, pos), 4)
            if stage >= 1:
                label = T.reduce_zero_label(label) if f.reduce_zero_label else label
                image, label = T.random_rescale(image, label, s[0], f.train_scale, f.ratio_range)
            if stage >= 2:
                image, label = T.crop(image, label, T.crop_window(label, s[1], f.image_size, f.cat_max_ratio))
            if stage >= 3:
                image, label = T.random_flip(image, label, s[2])
            if stage >= 4:
                image = T.photometric_distortion(image, s[3], f.brightness_delta, f.contrast_range,
                                                 f.saturation_range, f.hue_delta)
            if stage >= 5:
                image, label = sp._finish(image, label, f.image_size, f.image_size, config, False)
            # One pixel out: each op above still runs in full (only unused ops are
            # pruned), and the cost of the output does not depend on the cut.
            return image[0, 0, 0] + tf.cast(label[0, 0], tf.float32)
        return fn

    chunk = 8
    ds = tf.data.Dataset.from_tensor_slices(([r[0] for r in records], [r[1] for r in records]))
    ds = ds.repeat().enumerate()
    out = {}
    for k, name in enumerate(STAGES):
        fn = tf.autograph.experimental.do_not_convert(lambda pos, jp, k=k: upto(k)(pos, jp[0], jp[1]))
        it = iter(ds.map(fn).batch(chunk)
                  .with_options(_single_thread_options()).prefetch(2))
        per_rep = max(1, args.batches_per_rep * args.batch // chunk)
        out[name] = _time_batches(lambda: len(next(it)), 1, per_rep, args.reps)
    return out


def time_tf_decode(blobs, args, dct: str) -> dict[str, Any]:
    """Full ``tf.io.decode_jpeg`` + ``tf.io.decode_png`` of every example, one tf.data thread."""
    import tensorflow as tf

    chunk = 8  # elements per Python step: per-element iterator overhead out of the way
    ds = tf.data.Dataset.from_tensor_slices(([j for j, _ in blobs], [a for _, a in blobs])).repeat()

    def decode(jpeg, png):
        image = tf.io.decode_jpeg(jpeg, channels=3, dct_method=dct)
        label = tf.io.decode_png(png, channels=1)
        return image[0, 0, 0] + label[0, 0, 0]

    ds = ds.map(decode).batch(chunk)
    it = iter(ds.with_options(_single_thread_options()).prefetch(2))
    per_rep = max(1, len(blobs) // chunk)
    return _time_batches(lambda: len(next(it)), 2, per_rep, args.reps)


def time_pil_decode(blobs, args) -> dict[str, Any]:
    """Full PIL decode (libjpeg-turbo, accurate DCT; libpng) of every example, one thread."""
    from PIL import Image

    def decode_all() -> int:
        for jpeg, png in blobs:
            image = Image.open(io.BytesIO(jpeg))
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            Image.open(io.BytesIO(png)).load()
        return len(blobs)

    return _time_batches(decode_all, 1, 1, args.reps)


def check_mmseg_transcription(args) -> dict[str, Any]:
    """Runs mmseg_input.py's self-check (does the transcription do mmseg's work?) and
    compares its eval image sizes with our own mmcv-rule `rescale_size_py`.

    Raises:
      RuntimeError: the check failed; the contender is then not timed.
    """
    from dmformer_jax.data.segmentation import transforms as T

    with tempfile.TemporaryDirectory(prefix="mmseg_check_") as folder:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        proc = subprocess.run([args.mmseg_python, str(ROOT / "benchmarks" / "mmseg_input.py"), "--root", folder,
                               "--mode", "check"], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"mmseg-style contender not timed: {proc.stderr.strip()[-2000:]}")
    check = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = list(T.rescale_size_py(*check["source"], check["eval_scale"]))
    wrong = [image for image, _ in check["eval_shapes"] if image != expected]
    if wrong:
        raise RuntimeError(f"mmseg-style contender not timed: its eval images are {wrong[0]}, mmcv's rule "
                           f"(rescale_size_py) gives {expected}")
    return check


def run_mmseg(prepared, args, mode: str) -> dict[str, Any]:
    """benchmarks/mmseg_input.py in ``--mmseg-python``: mode train / eval / decode."""
    split = "training" if mode != "eval" else "validation"
    cmd = [
        args.mmseg_python, str(ROOT / "benchmarks" / "mmseg_input.py"), "--root", prepared["files"],
        "--split", split, "--mode", mode, "--workers", args.threads, "--batch", str(args.batch),
        "--crop", str(args.res), "--scale", f"{4 * args.res},{args.res}",
        "--batches-per-rep", str(args.batches_per_rep), "--warmup-batches", str(args.warmup_batches),
        "--reps", str(args.reps),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"mmseg-style contender ({mode}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    sys.stderr.write(proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for run in result["runs"].values():
        run.update(_summary(run["wall_s"], run["cpu_s"], [run["images_per_rep"]] * len(run["wall_s"])))
    return result


# ------------------------------------------------------------------------ report


ROWS = (
    ("ours_train_t{t}", "ours, train (ADE20K recipe, float32 out), {t} thread(s)"),
    ("ours_train_uint8_t{t}", "ours, train, uint8 out (TPU/GPU host default), {t} thread(s)"),
    ("ours_train_nophoto_t{t}", "ours, train, without PhotoMetricDistortion, {t} thread(s)"),
    ("ours_train_nocatmax_t{t}", "ours, train, without the cat_max_ratio crop test, {t} thread(s)"),
    ("ours_train_minimal_t{t}", "ours, train, decode + rescale + crop + normalise + pad only, {t} thread(s)"),
    ("ours_stage_decode_t{t}", "ours, train cut after: decode JPEG + PNG, {t} thread, scalar out"),
    ("ours_stage_rescale_t{t}", "ours, train cut after: + reduce_zero_label + random rescale, {t} thread"),
    ("ours_stage_crop_t{t}", "ours, train cut after: + cat_max_ratio crop, {t} thread"),
    ("ours_stage_flip_t{t}", "ours, train cut after: + flip, {t} thread"),
    ("ours_stage_photometric_t{t}", "ours, train cut after: + PhotoMetricDistortion, {t} thread"),
    ("ours_stage_normalise_pad_t{t}", "ours, train cut after: + normalise + pad, {t} thread"),
    ("mmseg_train_w{t}", "mmseg-style train (cv2), DataLoader {t} worker(s)"),
    ("ours_eval_t{t}", "ours, eval (AlignResize, padded buckets), {t} thread(s)"),
    ("mmseg_eval_w{t}", "mmseg-style eval (cv2 Resize + Normalize), DataLoader {t} worker(s)"),
    ("decode_cv2_t{t}", "decode floor: cv2 JPEG + PNG, {t} thread"),
    ("decode_pil_t{t}", "decode floor: PIL JPEG (accurate DCT) + PNG, {t} thread"),
    ("decode_tf_fast_t{t}", "decode floor: tf.io.decode_jpeg fast DCT + decode_png, {t} thread"),
    ("decode_tf_accurate_t{t}", "decode: tf.io.decode_jpeg accurate DCT + decode_png, {t} thread"),
)
DECODE_FLOORS = ("decode_cv2_t1", "decode_pil_t1", "decode_tf_fast_t1")


def ratios(c: dict[str, dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def ratio(name, a, b, key="img_per_s"):
        if a in c and b in c:
            out[name] = c[a][key] / c[b][key]

    floors = [k for k in DECODE_FLOORS if k in c]
    if floors:
        best = max(floors, key=lambda k: c[k]["img_per_cpu_s"])
        out["decode_floor"] = best
        ratio("train_t1_over_decode_floor", "ours_train_t1", best)
        ratio("train_t1_over_decode_floor_per_cpu_s", "ours_train_t1", best, "img_per_cpu_s")
        ratio("eval_t1_over_decode_floor_per_cpu_s", "ours_eval_t1", best, "img_per_cpu_s")
    ratio("train_t1_over_mmseg_w1", "ours_train_t1", "mmseg_train_w1")
    ratio("train_t1_over_mmseg_w1_per_cpu_s", "ours_train_t1", "mmseg_train_w1", "img_per_cpu_s")
    ratio("train_uint8_t1_over_mmseg_w1_per_cpu_s", "ours_train_uint8_t1", "mmseg_train_w1", "img_per_cpu_s")
    ratio("train_t2_over_mmseg_w2", "ours_train_t2", "mmseg_train_w2")
    ratio("train_t2_over_mmseg_w2_per_cpu_s", "ours_train_t2", "mmseg_train_w2", "img_per_cpu_s")
    ratio("eval_t1_over_mmseg_w1", "ours_eval_t1", "mmseg_eval_w1")
    ratio("eval_t1_over_mmseg_w1_per_cpu_s", "ours_eval_t1", "mmseg_eval_w1", "img_per_cpu_s")
    ratio("train_t2_over_t1", "ours_train_t2", "ours_train_t1")
    # CPU milliseconds per example of each stage: differences of the cuts.
    cuts = [f"ours_stage_{name}_t1" for name in STAGES]
    if all(k in c for k in cuts):
        ms = [1000.0 / c[k]["img_per_cpu_s"] for k in cuts]
        out["stage_cpu_ms"] = {name: ms[i] - (ms[i - 1] if i else 0.0) for i, name in enumerate(STAGES)}
        out["stage_cpu_ms"]["batch_and_transfer"] = 1000.0 / c["ours_train_t1"]["img_per_cpu_s"] - ms[-1] \
            if "ours_train_t1" in c else None
    return out


def markdown(result: dict) -> str:
    m, d, c, r = result["machine"], result["data"], result["contenders"], result["ratios"]
    mm = result.get("mmseg") or {}
    lines = [
        f"Run {result['date']} (`benchmarks/bench_seg_input.py`): ADE20K recipe, crop {result['res']}×"
        f"{result['res']}, batch {result['batch']}, {result['reps']} repetitions of {result['batches_per_rep']} "
        f"batches after {result['warmup_batches']} warm-up batches (median img/s, min–max).",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['platform']}; TensorFlow {m['tensorflow']}, "
        f"TFDS {m['tfds']}, Pillow {m['pillow']}"
        + (f"; mmseg-style contender: torch {mm['torch']}, OpenCV {mm['opencv']}, Pillow {mm['pillow']}"
           if mm.get("opencv") else "; mmseg-style contender: not run")
        + ".",
        "",
        f"Load average (1, 5, 15 min) at the start: {result['load_average_start']}, at the end: "
        f"{result['load_average_end']}. The machine is shared with other jobs: wall-clock img/s is "
        "what this process got of the cores; img per CPU-second counts only the CPU time the "
        "pipeline's own process tree used, and is the steadier per-core figure.",
        "",
        f"Data: {d['train_images']} train examples (+{d['validation_images']} val) prepared by our ade20k builder "
        f"from an ADEChallengeData2016.zip; mean {d['mean_pixels'] / 1000:.0f}k pixels, JPEG "
        f"{d['mean_jpeg_kbytes']:.0f} KB ({d['jpeg_bytes_per_pixel']:.2f} bytes/pixel), annotation PNG "
        f"{d['png_bytes_per_pixel']:.3f} bytes/pixel.",
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
        f"- ours ÷ mmseg-style, train, 1 thread vs 1 worker: {fmt('train_t1_over_mmseg_w1')} img/s, "
        f"**{fmt('train_t1_over_mmseg_w1_per_cpu_s')} per CPU-second** (target ≥ 1.5× per core; uint8 out: "
        f"{fmt('train_uint8_t1_over_mmseg_w1_per_cpu_s')}); 2 threads vs 2 workers: {fmt('train_t2_over_mmseg_w2')} "
        f"img/s, {fmt('train_t2_over_mmseg_w2_per_cpu_s')} per CPU-second.",
        f"- ours ÷ mmseg-style, eval, 1 thread vs 1 worker: {fmt('eval_t1_over_mmseg_w1')} img/s, "
        f"{fmt('eval_t1_over_mmseg_w1_per_cpu_s')} per CPU-second.",
        f"- ours train ÷ decode floor ({r.get('decode_floor', '—')}): {fmt('train_t1_over_decode_floor')} img/s, "
        f"**{fmt('train_t1_over_decode_floor_per_cpu_s')} per CPU-second** (target ≥ 0.5×); eval: "
        f"{fmt('eval_t1_over_decode_floor_per_cpu_s')} per CPU-second.",
        f"- 2 threads ÷ 1 thread, train: {fmt('train_t2_over_t1')} img/s.",
    ]
    if "stage_cpu_ms" in r:
        parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in r["stage_cpu_ms"].items() if v is not None)
        lines.append(f"- Where our training example's CPU time goes (ms per example, differences of the cuts "
                     f"above): {parts}.")
    return "\n".join(lines)


# -------------------------------------------------------------------------- main


def main(argv=None) -> dict[str, Any]:
    return run_in_cache(parse_args(argv), _run, "bench_seg_input_smoke_")


def _run(args, cache: Path) -> dict[str, Any]:
    import PIL
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from dmformer_jax import bench
    from dmformer_jax.data import pipeline

    # The accelerator-host path, as bench_input: the config's private thread pool and
    # single-threaded ops apply; transfer_dtype is set explicitly per contender.
    pipeline._accelerator_host = lambda: True

    load_start = load_average()
    prepared = prepare_data(cache, args)
    print(f"data: {prepared['stats']} (prepare/open {prepared['prepare_s']:.1f} s)", flush=True)
    contenders: dict[str, dict] = {}

    def record(name: str, fn: Callable[[], dict]) -> None:
        record_contender(contenders, name, fn)

    mmseg_info = None
    if args.mmseg_python:
        try:
            check_mmseg_transcription(args)
            modes = ("train", "eval", "decode")
            print("mmseg-style transcription self-check passed", flush=True)
        except RuntimeError as e:
            print(e, file=sys.stderr, flush=True)
            mmseg_info, modes = {"check_error": str(e)[-2000:]}, ()
        for mode in modes:
            load = load_average()
            try:
                result = run_mmseg(prepared, args, mode)
            except RuntimeError as e:  # keep our figures; the error goes into the results
                print(e, file=sys.stderr, flush=True)
                mmseg_info = dict(mmseg_info or {}, **{f"{mode}_error": str(e)[-2000:]})
                continue
            mmseg_info = dict(mmseg_info or {}, **{k: result[k] for k in ("torch", "opencv", "pillow")})
            for w, run in result["runs"].items():
                run["load_average"] = load
                name = f"mmseg_{mode}_w{w}" if mode != "decode" else "decode_cv2_t1"
                contenders[name] = run
                print(f"{name:28s} {run['img_per_s']:8.1f} img/s  {run['img_per_cpu_s']:8.1f} img/CPU-s  "
                      f"cores {run['cores_used']:.2f}", flush=True)
    else:
        print("mmseg-style contender skipped: pass --mmseg-python PATH (an interpreter with torch and "
              "opencv-python, see docs/benchmarks.md)", flush=True)

    for t in args.thread_counts:
        record(f"ours_train_t{t}", lambda: time_ours_train(prepared, args, t))
    if not args.smoke:
        record("ours_train_uint8_t1", lambda: time_ours_train(prepared, args, 1, transfer_dtype="uint8"))
        record("ours_train_nophoto_t1", lambda: time_ours_train(prepared, args, 1, photometric=False))
        record("ours_train_nocatmax_t1", lambda: time_ours_train(prepared, args, 1, cat_max_ratio=1.0))
        record("ours_train_minimal_t1", lambda: time_ours_train(
            prepared, args, 1, photometric=False, cat_max_ratio=1.0, hflip=False))
        stages = time_ours_stages(prepared, args)
        for name in STAGES:
            record(f"ours_stage_{name}_t1", lambda: stages[name])
    for t in args.thread_counts:
        record(f"ours_eval_t{t}", lambda: time_ours_eval(prepared, args, t))
    record("decode_pil_t1", lambda: time_pil_decode(prepared["blobs"], args))
    record("decode_tf_fast_t1", lambda: time_tf_decode(prepared["blobs"], args, "INTEGER_FAST"))
    record("decode_tf_accurate_t1", lambda: time_tf_decode(prepared["blobs"], args, "INTEGER_ACCURATE"))

    flags = bench.cpu_isa_flags()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": bench.machine_info({
            "tensorflow": tf.__version__, "tfds": tfds.__version__, "pillow": PIL.__version__,
            "isa": bench.isa_line(flags),
        }),
        "mmseg": mmseg_info,
        "data": prepared["stats"],
        "batch": args.batch, "res": args.res, "reps": args.reps, "batches_per_rep": args.batches_per_rep,
        "warmup_batches": args.warmup_batches, "threads": args.thread_counts, "smoke": args.smoke,
        "load_average_start": load_start, "load_average_end": load_average(),
        "contenders": contenders,
    }
    result["ratios"] = ratios(contenders)
    table = markdown(result)
    if args.out:
        bench.publish(result, table, "seg_input", Path(args.out), args.docs)
    else:
        print(table)
    return result


if __name__ == "__main__":
    main()
