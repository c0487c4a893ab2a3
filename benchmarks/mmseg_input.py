"""An mmseg-style ADE20K input pipeline (OpenCV + NumPy in a torch DataLoader), timed:
the contender of benchmarks/bench_seg_input.py.

Runs in a separate interpreter with torch and opencv-python (neither is needed by the
project; see docs/benchmarks.md), so it imports nothing from this project. mmseg and
mmcv themselves are not installed (mmcv 1.x does not build against current torch):
this file is our own transcription of what mmsegmentation 0.x's ADE20K config
(configs/_base_/datasets/ade20k.py) runs on the host, step by step, with the same
OpenCV / NumPy calls mmcv makes:

- LoadImageFromFile: file bytes -> ``cv2.imdecode(IMREAD_COLOR)`` (BGR uint8)
  (mmseg/datasets/pipelines/loading.py; mmcv/image/io.py ``imfrombytes``, backend cv2).
- LoadAnnotations(reduce_zero_label=True): PIL decode of the PNG ('unchanged',
  mmseg's default imdecode_backend='pillow'), ``squeeze().astype(uint8)``; then
  0 -> 255, c -> c - 1, 254 -> 255 (loading.py).
- Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True): ratio =
  U[0, 1) * 1.5 + 0.5; scale = (int(2048 r), int(512 r)); mmcv ``imrescale``: factor =
  min(long / max(h, w), short / min(h, w)), size int(side * factor + 0.5);
  ``cv2.resize`` INTER_LINEAR for the image, INTER_NEAREST for the label
  (mmseg/datasets/pipelines/transforms.py ``Resize``; mmcv/image/geometric.py
  ``rescale_size`` / ``imrescale`` / ``imresize``).
- RandomCrop(512, cat_max_ratio=0.75): offsets ``randint(0, margin + 1)``; up to 10
  tries of ``np.unique(crop, return_counts=True)`` without 255: more than one class
  and max / sum < 0.75 (transforms.py ``RandomCrop``).
- RandomFlip(prob=0.5): ``np.flip(axis=1)`` (mmcv ``imflip``), label ``.copy()``.
- PhotoMetricDistortion: brightness, contrast (2nd or last), saturation and hue in
  OpenCV's uint8 HSV (``cv2.cvtColor`` BGR2HSV / HSV2BGR, mmcv/image/colorspace.py),
  each with probability 0.5, ``convert`` = float32 * alpha + beta, clip, astype(uint8)
  (transforms.py ``PhotoMetricDistortion``).
- Normalize(mean, std, to_rgb=True): float32 copy, ``cv2.cvtColor(BGR2RGB)`` in
  place, ``cv2.subtract(mean)``, ``cv2.multiply(1 / std)`` (mmcv/image/photometric.py
  ``imnormalize_``).
- Pad(size=(512, 512), pad_val=0, seg_pad_val=255): ``cv2.copyMakeBorder`` bottom /
  right (mmcv/image/geometric.py ``impad``).
- DefaultFormatBundle: HWC -> CHW contiguous, label int64 [1, H, W]
  (mmseg/datasets/pipelines/formatting.py); the batch is stacked by torch's collate.

Eval (the test pipeline: MultiScaleFlipAug(img_scale=(2048, 512), flip=False) with
Resize(keep_ratio=True), Normalize, ImageToTensor): decode, ``imrescale`` to (2048,
512) with INTER_LINEAR, normalise, CHW; plus the annotation decode + reduce_zero_label
that mmseg's evaluation does for every image (``get_gt_seg_map_by_idx``). Images keep
their own sizes (mmseg tests one image per GPU), so a batch is a list.

The DataLoader runs N worker processes with OpenCV's own threading off
(``cv2.setNumThreads(0)``, as mmseg's ``setup_multi_processes`` does) and an endless
shuffled sampler. Prints one JSON line; progress goes to stderr.

    /work/venv-timm/bin/python benchmarks/mmseg_input.py --root DIR --mode train --workers 1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from loader_timing import time_loader  # benchmarks/, next to this script

# mmseg's ADE20K img_norm_cfg (0..255 scale, RGB).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


# ------------------------------------------------------------ the transcription


def load_image(path: str) -> np.ndarray:
    """LoadImageFromFile: BGR uint8 [H, W, 3]."""
    import cv2

    with open(path, "rb") as f:
        content = f.read()
    return cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)


def load_annotation(path: str, reduce_zero_label: bool = True) -> np.ndarray:
    """LoadAnnotations: uint8 [H, W] (255 = ignore after reduce_zero_label)."""
    import io

    from PIL import Image

    with open(path, "rb") as f:
        content = f.read()
    gt = np.array(Image.open(io.BytesIO(content))).squeeze().astype(np.uint8)
    if reduce_zero_label:
        gt[gt == 0] = 255
        gt = gt - 1
        gt[gt == 254] = 255
    return gt


def rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with a (long, short) scale tuple: the new (w, h)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def imrescale(img: np.ndarray, scale: tuple[int, int], interpolation: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(img, rescale_size(w, h, scale), interpolation=interpolation)


def random_crop_bbox(shape, crop: tuple[int, int], rng) -> tuple[int, int, int, int]:
    margin_h, margin_w = max(shape[0] - crop[0], 0), max(shape[1] - crop[1], 0)
    y = rng.randint(0, margin_h + 1)
    x = rng.randint(0, margin_w + 1)
    return y, y + crop[0], x, x + crop[1]


def random_crop(img, seg, crop, cat_max_ratio, rng, ignore_index=255):
    bbox = random_crop_bbox(img.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = bbox
            labels, cnt = np.unique(seg[y1:y2, x1:x2], return_counts=True)
            cnt = cnt[labels != ignore_index]
            if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
            bbox = random_crop_bbox(img.shape, crop, rng)
    y1, y2, x1, x2 = bbox
    return img[y1:y2, x1:x2, ...], seg[y1:y2, x1:x2]


def _convert(img, alpha=1.0, beta=0.0):
    img = img.astype(np.float32) * alpha + beta
    img = np.clip(img, 0, 255)
    return img.astype(np.uint8)


def photometric_distortion(img, rng, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
    import cv2

    def contrast(x):
        if rng.randint(2):
            return _convert(x, alpha=rng.uniform(*contrast_range))
        return x

    if rng.randint(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.randint(2)
    if mode == 1:
        img = contrast(img)
    if rng.randint(2):
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 1] = _convert(img[:, :, 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if rng.randint(2):
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 0] = (img[:, :, 0].astype(int) + rng.randint(-hue_delta, hue_delta)) % 180
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if mode == 0:
        img = contrast(img)
    return img


def normalize(img: np.ndarray, mean=MEAN, std=STD) -> np.ndarray:
    """mmcv ``imnormalize`` with to_rgb=True: float32 RGB (x - mean) / std."""
    import cv2

    img = img.copy().astype(np.float32)
    mean64 = np.float64(np.asarray(mean).reshape(1, -1))
    stdinv = 1 / np.float64(np.asarray(std).reshape(1, -1))
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
    cv2.subtract(img, mean64, img)
    cv2.multiply(img, stdinv, img)
    return img


def impad(img: np.ndarray, shape: tuple[int, int], pad_val) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    return cv2.copyMakeBorder(img, 0, shape[0] - h, 0, shape[1] - w, cv2.BORDER_CONSTANT, value=pad_val)


class Ade20kStyle:
    """mmseg's ADE20K dataset with its train or test pipeline (see the module doc)."""

    def __init__(self, root: str, split: str, mode: str, crop: int = 512, scale=(2048, 512),
                 ratio_range=(0.5, 2.0), cat_max_ratio: float = 0.75, photometric: bool = True):
        images = sorted((Path(root) / "images" / split).glob("*.jpg"))
        self.items = [(str(p), str(Path(root) / "annotations" / split / (p.stem + ".png"))) for p in images]
        self.mode, self.crop, self.scale = mode, (crop, crop), tuple(scale)
        self.ratio_range, self.cat_max_ratio, self.photometric = ratio_range, cat_max_ratio, photometric

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import cv2
        import torch

        rng = np.random  # mmseg's transforms draw from NumPy's global RNG (seeded per worker by torch)
        image_path, label_path = self.items[i]
        img = load_image(image_path)
        seg = load_annotation(label_path)
        if self.mode == "eval":
            img = imrescale(img, self.scale, cv2.INTER_LINEAR)
            img = normalize(img)
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(seg.astype(np.int64))
        lo, hi = self.ratio_range
        ratio = rng.random_sample() * (hi - lo) + lo
        scale = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        img = imrescale(img, scale, cv2.INTER_LINEAR)
        seg = imrescale(seg, scale, cv2.INTER_NEAREST)
        img, seg = random_crop(img, seg, self.crop, self.cat_max_ratio, rng)
        if rng.rand() < 0.5:
            img = np.flip(img, axis=1)
            seg = np.flip(seg, axis=1).copy()
        if self.photometric:
            img = photometric_distortion(img, rng)
        img = normalize(img)
        img = impad(img, self.crop, 0)
        seg = impad(seg, img.shape[:2], 255)
        return (torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                torch.from_numpy(seg[None].astype(np.int64)))


def _list_collate(batch):
    return batch


def _worker_init(_):
    import cv2

    cv2.setNumThreads(0)


# ---------------------------------------------------------------------- timing


def _time_loader(dataset, args, workers: int, collate) -> dict:
    out, batch = time_loader(dataset, args, workers, collate_fn=collate, worker_init_fn=_worker_init)
    if args.mode == "train":
        shape = tuple(batch[0].shape)
        assert shape == (args.batch, 3, args.crop, args.crop), shape
        assert tuple(batch[1].shape) == (args.batch, 1, args.crop, args.crop), batch[1].shape
    else:
        shape = [tuple(x[0].shape) for x in batch]
    out["last_batch_shape"] = str(shape)
    return out


def _time_decode(dataset, args) -> dict:
    """One thread: cv2.imdecode of every JPEG + cv2.imdecode(IMREAD_UNCHANGED) of every PNG."""
    import cv2

    cv2.setNumThreads(1)
    blobs = [(np.frombuffer(Path(i).read_bytes(), np.uint8), np.frombuffer(Path(a).read_bytes(), np.uint8))
             for i, a in dataset.items]
    wall, cpu_s = [], []
    for rep in range(args.reps + 1):
        c0, t0 = time.process_time(), time.perf_counter()
        for jpeg, png in blobs:
            img = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
            seg = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
            assert img.ndim == 3 and seg.ndim == 2 and seg.shape == img.shape[:2]
        if rep:  # the first pass is the warm-up
            wall.append(time.perf_counter() - t0)
            cpu_s.append(time.process_time() - c0)
    n = len(blobs)
    return {"workers": 0, "images_per_rep": n, "wall_s": wall, "cpu_s": cpu_s,
            "img_per_s": n / statistics.median(wall), "img_per_cpu_s": n / statistics.median(cpu_s)}


def self_check(folder: str, crop: int = 64) -> dict:
    """Checks that this transcription does mmseg's work, on data it writes to ``folder``
    (run by bench_seg_input.py before it times this contender; a failure is an error).

    Masks: the left 3/4 one class (1), the right 1/4 stripes of classes 150 and 2, so a
    random ``crop``-wide window of the rescaled image is dominated by one class most of
    the time, and only cat_max_ratio's retries make most crops pass. Checked: labels
    reduced to 0..149 (+ 255 padding); crops of crop x crop, padded with 255 in about a
    third of draws (ratio < 1); > 80% of crops below the 0.75 class share; eval images
    rescaled by mmcv's rule (returned for the caller to compare with its own), labels
    at the original size. Returns the eval (image, label) shapes.
    """
    import cv2

    h, w = 2 * crop, 8 * crop
    mask = np.ones((h, w), np.uint8)
    mask[:, 3 * w // 4:] = np.where(np.arange(w - 3 * w // 4) // 4 % 2, 150, 2)[None]
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for i in range(4):
            for kind in ("images", "annotations"):
                (Path(folder) / kind / split).mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
            cv2.imwrite(str(Path(folder) / "images" / split / f"ADE_{i}.jpg"), image)
            cv2.imwrite(str(Path(folder) / "annotations" / split / f"ADE_{i}.png"), mask)
    ds = Ade20kStyle(folder, "training", "train", crop=crop, scale=(4 * crop, crop))
    np.random.seed(0)
    values, padded, shares, n = set(), 0, [], 0
    for _ in range(10):
        for i in range(len(ds)):
            img, seg = ds[i]
            if tuple(img.shape) != (3, crop, crop) or tuple(seg.shape) != (1, crop, crop):
                raise AssertionError(f"train crop shapes {tuple(img.shape)}, {tuple(seg.shape)}")
            s = seg.numpy()[0]
            values |= set(np.unique(s).tolist())
            padded += int((s == 255).all(axis=1).any())
            _, counts = np.unique(s[s != 255], return_counts=True)
            shares.append(float(counts.max() / counts.sum()) if len(counts) > 1 else 1.0)
            n += 1
    problems = []
    if sorted(values - {255}) != [0, 1, 149]:
        problems.append(f"labels {sorted(values)}: not reduced to 0..149 (+255)")
    if not 0.1 < padded / n < 0.6:
        problems.append(f"{padded}/{n} crops padded: the ratio range is not (0.5, 2.0)")
    if sum(share < 0.75 for share in shares) / n <= 0.8:
        problems.append("cat_max_ratio not honoured (too few crops below a 0.75 class share)")
    ev = Ade20kStyle(folder, "validation", "eval", crop=crop, scale=(4 * crop, crop))
    shapes = [(list(x.shape[1:]), list(y.shape)) for x, y in (ev[i] for i in range(len(ev)))]
    if any(label != [h, w] for _, label in shapes):
        problems.append(f"eval labels not at the original {h}x{w}: {shapes}")
    if problems:
        raise AssertionError("; ".join(problems))
    return {"source": [h, w], "eval_scale": [4 * crop, crop], "eval_shapes": shapes}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder with images/SPLIT/*.jpg and annotations/SPLIT/*.png "
                                                 "(--mode check: an empty folder it writes its data to)")
    p.add_argument("--split", default="training")
    p.add_argument("--mode", choices=["train", "eval", "decode", "check"], default="train")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--scale", default="2048,512", help="Resize img_scale (long, short)")
    p.add_argument("--batches-per-rep", type=int, default=4)
    p.add_argument("--warmup-batches", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)

    import cv2
    import PIL
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(0)  # the main process too (mmseg's setup_multi_processes)
    if args.mode == "check":
        try:
            print(json.dumps(self_check(args.root)))
        except AssertionError as e:
            print(f"error: the mmseg-style transcription does not do mmseg's work: {e}", file=sys.stderr)
            raise SystemExit(1)
        return
    scale = tuple(int(v) for v in args.scale.split(","))
    dataset = Ade20kStyle(args.root, args.split, "eval" if args.mode == "eval" else "train", crop=args.crop,
                          scale=scale)
    if not len(dataset):
        print(f"error: no images/{args.split}/*.jpg under --root {args.root}", file=sys.stderr)
        raise SystemExit(2)
    out = {"torch": torch.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__,
           "num_images": len(dataset), "mode": args.mode, "runs": {}}
    if args.mode == "decode":
        out["runs"]["1"] = run = _time_decode(dataset, args)
        print(f"cv2 decode: {run['img_per_s']:.1f} img/s, {run['img_per_cpu_s']:.1f} img per CPU-s",
              file=sys.stderr, flush=True)
    else:
        collate = None if args.mode == "train" else _list_collate
        for workers in (int(w) for w in args.workers.split(",")):
            out["runs"][str(workers)] = run = _time_loader(dataset, args, workers, collate)
            print(f"mmseg-style {args.mode} workers={workers}: {run['img_per_s']:.1f} img/s, "
                  f"{run['img_per_cpu_s']:.1f} img per CPU-s", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
