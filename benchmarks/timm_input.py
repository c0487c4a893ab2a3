"""timm's PyTorch input pipeline, timed: the contender of benchmarks/bench_input.py.

Runs in a separate interpreter that has timm, torchvision and torch (they are not
project dependencies; see docs/benchmarks.md), so it imports nothing from this
project. What a timm user runs: `timm.data.ImageDataset` over a class-folder tree of
JPEGs (PIL decode), `timm.data.create_transform` with the recipe's arguments, and a
`torch.utils.data.DataLoader` with N worker processes. Prints one JSON line.

    /work/venv-timm/bin/python benchmarks/timm_input.py --root DIR/train --workers 1,2 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from loader_timing import time_loader  # benchmarks/, next to this script


def _posterize_zero_bits_as_older_pillow() -> None:
    """timm's PosterizeIncreasing keeps 4 - int(0.4 m) bits: 0 bits when RandAugment's
    magnitude (9 +- 0.5 sd, clipped to 10) reaches 10. Pillow >= 12 rejects
    ``ImageOps.posterize(img, 0)`` (ValueError), which kills the DataLoader worker;
    older Pillow returned a black image, as our TF op does. Same result, restored."""
    from PIL import Image, ImageOps
    from timm.data import auto_augment

    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return  # this Pillow still accepts 0 bits
    except ValueError:
        pass
    original = auto_augment.posterize

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return img.point([0] * 256 * len(img.getbands()))
        return original(img, bits_to_keep, **kwargs)

    for name, fn in list(auto_augment.NAME_TO_OP.items()):
        if fn is original:
            auto_augment.NAME_TO_OP[name] = posterize


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", required=True, help="class-folder tree of JPEGs (timm ImageDataset)")
    p.add_argument("--mode", choices=["train", "train_prefetcher", "eval"], default="train",
                   help="train_prefetcher: timm's GPU-loader path (create_transform(use_prefetcher=True): "
                        "uint8 out; FastCollateMixup mixes on the host; erasing and normalising happen "
                        "on the device, so not here)")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.9)
    p.add_argument("--mean", default="0.485,0.456,0.406")
    p.add_argument("--std", default="0.229,0.224,0.225")
    p.add_argument("--auto-augment", default="rand-m9-mstd0.5-inc1")
    p.add_argument("--re-prob", type=float, default=0.25)
    p.add_argument("--mixup-alpha", type=float, default=0.8)
    p.add_argument("--cutmix-alpha", type=float, default=1.0)
    p.add_argument("--switch-prob", type=float, default=0.5)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batches-per-rep", type=int, default=8)
    p.add_argument("--warmup-batches", type=int, default=3)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)

    import PIL
    import PIL.features
    import timm
    import torch
    import torchvision
    from timm.data import FastCollateMixup, ImageDataset, create_transform

    torch.set_num_threads(1)
    _posterize_zero_bits_as_older_pillow()
    mean = tuple(float(v) for v in args.mean.split(","))
    std = tuple(float(v) for v in args.std.split(","))
    loader_kwargs = {}
    prefetcher = args.mode == "train_prefetcher"
    if args.mode in ("train", "train_prefetcher"):
        transform = create_transform(
            args.res, is_training=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
            auto_augment=args.auto_augment, interpolation="bicubic", mean=mean, std=std,
            re_prob=args.re_prob, re_mode="pixel", re_count=1, use_prefetcher=prefetcher,
        )
        if prefetcher:  # timm's create_loader with mixup and the prefetcher
            loader_kwargs["collate_fn"] = FastCollateMixup(
                mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha, prob=1.0,
                switch_prob=args.switch_prob, mode="batch", label_smoothing=args.smoothing,
                num_classes=args.num_classes,
            )
    else:
        transform = create_transform(args.res, is_training=False, interpolation="bicubic", crop_pct=args.crop_pct,
                                     mean=mean, std=std)
    dataset = ImageDataset(args.root, transform=transform)  # PIL: Image.open(f).convert('RGB')
    out = {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
        "pillow": PIL.__version__, "libjpeg_turbo": bool(PIL.features.check_feature("libjpeg_turbo")),
        "transform": repr(transform), "num_images": len(dataset), "mode": args.mode, "runs": {},
    }
    for workers in (int(w) for w in args.workers.split(",")):
        run, batch = time_loader(dataset, args, workers, **loader_kwargs)
        assert tuple(batch[0].shape) == (args.batch, 3, args.res, args.res), batch[0].shape
        run["dtype"] = str(batch[0].dtype)
        out["runs"][str(workers)] = run
        images = run["images_per_rep"]
        wall, cpu_s = run["wall_s"], run["cpu_s"]
        print(f"timm {args.mode} workers={workers}: {images / statistics.median(wall):.1f} img/s, "
              f"{images / statistics.median(cpu_s):.1f} img per CPU-s", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
