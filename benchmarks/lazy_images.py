"""Benchmark (not a test): reading training batches from memory-mapped cache shards vs an in-memory tensor.

ImageNet-scale splits above ``$BENCH_IN_MEMORY_GB`` are held as :class:`harness.imageset.LazyImages` over the
dataset cache's safetensors shards (docs/datasets.md). This measures what a training loop pays for that: random
batches (``images[idx]`` with a shuffled index, as ``train_classifier`` and the generators draw them) and
sequential batches (as evaluation reads them), from

- ``memory``: one in-memory uint8 tensor (what smaller sets use);
- ``mapped``: LazyImages over the shards, page cache warm (the set was just written / read once);
- ``mapped + subset + concat``: the same through a shuffled ``subset`` and a ``concat`` with an in-memory part,
  as ``D_t`` = D_real + synthetic images is built.

It writes ``--images`` random images of ``--size`` px as shards into a temporary directory (``--dir`` to choose
the disk). A cold page cache (first epoch after a reboot) is bounded by the disk's random-read speed instead;
drop the caches yourself (``echo 3 > /proc/sys/vm/drop_caches``, root) to see it.

    python benchmarks/lazy_images.py                       # 8,192 images at 224 px (1.2 GB), batch 128
    python benchmarks/lazy_images.py --images 20000 --size 64
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from harness.imageset import ImageSet, LazyImages
from harness.engine.rundir import map_tensors
from plugins.datasets._imagefolder import _write_cache, shard_rows


def rate(images, index: torch.Tensor, batch: int, seconds: float = 3.0) -> float:
    """Images per second gathering ``images[index[i:i+batch]]`` for about ``seconds``."""
    n = done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for start in range(0, len(index), batch):
            x = images[index[start : start + batch]]
            done += x.shape[0]
            n += 1
            if time.perf_counter() - t0 >= seconds:
                break
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dir", default=None, help="where to write the shards (default: a temporary directory)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    gib = images.numel() / 2**30
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp) / "train-demo"
        _write_cache(directory, images, None, "demo")
        shards = sorted(directory.glob("shard-*.safetensors"))
        lazy = LazyImages([map_tensors(p)["images"] for p in shards])
        assert torch.equal(lazy[:16], images[:16])
        rate(lazy, torch.arange(len(lazy)), 1024, 1.0)  # warm the page cache
        shuffled = torch.randperm(args.images, generator=gen)
        real = ImageSet.create(lazy, torch.zeros(args.images, dtype=torch.int64))
        extra = ImageSet.create(images[: args.images // 4].clone(), torch.zeros(args.images // 4, dtype=torch.int64))
        mixed = ImageSet.concat([real.subset(shuffled), extra]).images
        mixed_order = torch.randperm(len(mixed), generator=gen)
        print(f"{args.images:,} images of 3×{args.size}×{args.size} ({gib:.2f} GiB) in {len(shards)} shards of "
              f"≤ {shard_rows(args.size):,}; batch {args.batch}; 1 thread; {platform.machine()}, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
        print("| images held as | random batches img/s | sequential img/s |")
        print("|---|---:|---:|")
        for name, held, order in (("memory (one tensor)", images, shuffled),
                                  ("mapped shards (LazyImages)", lazy, shuffled),
                                  ("mapped, subset + concat with an in-memory part", mixed, mixed_order)):
            seq = torch.arange(len(held))
            print(f"| {name} | {rate(held, order, args.batch):,.0f} | {rate(held, seq, args.batch):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
