"""Real-data benchmark of the ``dcgan`` generator on Colorized MNIST (not a test).

Trains dcgan with the recommended ``quick`` options on the ``colored-mnist`` dataset plugin (embedded 5k MNIST
digits: 4,000 train / 1,000 test; ``--bias biased`` is the quick preset's colouring, ``unbiased`` uniform colours)
and reports: training throughput in fp32 vs bf16 autocast, with and without channels_last (short runs on a
1,024-image subset); training seconds and images/s at the recommended options; label fidelity ``q`` (fraction of
2,000 generated images, labels drawn from the training class distribution, that the harness's oracle (docs/metrics.md)
trained on the real coloured digits assigns to their conditioning class); ``u`` (total-variation distance between the per-class colour
distributions of the generated and the real training images, averaged over classes, colours measured from pixels
by the dataset plugin); and FID as the harness computes it (harness/fid.py) when the TF-2015 Inception weights are
installed (skipped with the harness's note otherwise).

    python benchmarks/dcgan_mnist.py                        # quick options, biased colouring, 1 thread
    python benchmarks/dcgan_mnist.py --bias unbiased --threads 2
    python benchmarks/dcgan_mnist.py --full                 # all of MNIST from $BENCH_DATA_ROOT (../shared/data)
    python benchmarks/dcgan_mnist.py --device cuda --throughput-images 16384   # the GPU path
    python benchmarks/dcgan_mnist.py --generator vae --throughput none         # another generator, same measures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.interfaces import Generator, Runtime
from harness.imageset import ImageSet
from harness.engine.stages import fit_oracle
from harness.plugin.manager import default_plugins
from harness.engine.progress import NullReporter
from harness.specs import build_spec
from harness.engine.training import TrainedClassifier, build_classifier
from plugins.classifiers.lenet import LeNet
from plugins.datasets.colored_mnist import ColoredMNIST

#: What the harness's ``quick`` preset should pass to dcgan (docs/generators.md). The defaults equal these.
QUICK_OPTIONS: dict = {"width": 32, "epochs": 10, "batch_size": 64}


# --------------------------------------------------------------------------------------------------- oracle


def train_oracle(train: ImageSet, device: str, seed: int = 0) -> TrainedClassifier:
    """The harness's oracle (SPEC §4, docs/metrics.md): the quick preset's ``metrics.oracle`` classifier (LeNet,
    width 2, dropout 0.5) trained by :func:`harness.loop.fit_oracle` on subgroup-balanced real digits."""
    spec = build_spec("quick")
    o = spec.metrics.oracle
    plugin = LeNet(LeNet.Options(**o.classifier.options))
    c, s, _ = train.shape
    torch.manual_seed(seed)  # the weights' initialisation
    clf = build_classifier("oracle", plugin, num_classes=10, channels=c, image_size=s, device=device,
                           precision="fp32")
    runtime = Runtime(device=device, precision="fp32", seed=seed, reporter=NullReporter(), workdir=Path("."))
    fit_oracle(clf, train, spec, runtime)
    return clf


def colour_tv(fake_colours: torch.Tensor, fake_labels: torch.Tensor, real: ImageSet, groups: int) -> float:
    """Mean over classes of the TV distance between generated and real colour distributions (SPEC §4's u)."""
    tvs = []
    for c in range(int(real.labels.max()) + 1):
        f = fake_colours[(fake_labels == c) & (fake_colours >= 0)]
        r = real.subgroups[real.labels == c]
        if len(f) and len(r):
            pf = torch.bincount(f, minlength=groups).float() / len(f)
            pr = torch.bincount(r, minlength=groups).float() / len(r)
            tvs.append(0.5 * (pf - pr).abs().sum().item())
    return float(np.mean(tvs))


def class_diversity(images: torch.Tensor, labels: torch.Tensor, per_class: int = 100) -> float:
    """Within-class diversity: mean over classes of the mean pairwise L1 distance per pixel between (up to)
    ``per_class`` images of the class, on the colour-blind intensity (max over channels). Mode collapse *within*
    a class — one image per label whatever z — shows as a value far below the real data's, which q and u miss."""
    g = images.float().div(255).amax(1).flatten(1)
    values = []
    for c in torch.unique(labels).tolist():
        a = g[labels == c][:per_class]
        if len(a) > 1:
            values.append(torch.cdist(a, a, p=1).sum().item() / (len(a) * (len(a) - 1) * a.shape[1]))
    return float(np.mean(values))


# --------------------------------------------------------------------------------------------------- FID


def harness_fid(fake: torch.Tensor, real: torch.Tensor, device: str) -> float:
    """FID exactly as the harness computes it (harness/fid.py: TF-2015 Inception, TF1 bilinear resize to 299)."""
    from harness.measure import fid

    extractor = fid.get_extractor("inception-tf2015", device)
    f_fake = fid.extract_features(extractor, fake, device)
    f_real = fid.extract_features(extractor, real, device)
    return fid.frechet_distance(f_real, f_fake)[0]


# --------------------------------------------------------------------------------------------------- main


def generator_class(name: str) -> type[Generator]:
    return default_plugins().registry("generators").get(name)[0]


def run_generator(train: ImageSet, options: dict, precision: str, seed: int, workdir: Path,
                  device: str = "cpu", cls: type[Generator] | None = None) -> tuple[Generator, dict]:
    torch.manual_seed(seed)
    runtime = Runtime(device=device, precision=precision, seed=seed, reporter=NullReporter(), workdir=workdir)
    c, s, _ = train.shape
    cls = cls or generator_class("dcgan")
    gen = cls(
        cls.Options(**options),
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
    ap.add_argument("--full", action="store_true", help="all of MNIST (source=torchvision) from --data-root")
    ap.add_argument("--data-root", default=os.environ.get("BENCH_DATA_ROOT", "../shared/data"))
    ap.add_argument("--bias", choices=("biased", "unbiased"), default="biased")
    ap.add_argument("--train-size", type=int, default=None, help="stratified subsample of the training set")
    ap.add_argument("--generator", default="dcgan", help="any registered generator (its defaults; dcgan: quick)")
    ap.add_argument("--options", default="{}", help="JSON overriding the generator's options")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared 2-core box)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:k] (the throughput rows then also try bf16)")
    ap.add_argument("--throughput-images", type=int, default=1024, help="images of the throughput rows")
    ap.add_argument("--throughput", choices=("all", "fp32", "none"), default="all",
                    help="all: fp32/bf16 × contiguous/channels_last on 1,024 images; fp32: only fp32 rows")
    ap.add_argument("--no-fid", action="store_true", help="skip FID (Inception runs at ~1.3 img/s on this CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    ds_options = {"source": "torchvision" if args.full else "embedded", "bias": args.bias}
    if args.train_size:
        ds_options["train_size"] = args.train_size
    dataset = ColoredMNIST(ColoredMNIST.Options(**ds_options), data_root=Path(args.data_root))
    bundle = dataset.load()
    train, test = bundle.train, bundle.test
    options = {**(QUICK_OPTIONS if args.generator == "dcgan" else {}), **json.loads(args.options)}
    machine = f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), " \
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    log(f"colored-mnist {ds_options}: {len(train)} train / {len(test)} test; {machine}")

    t = time.perf_counter()
    oracle = train_oracle(train, args.device, args.seed)
    oracle_acc = (oracle.predict(test.images) == test.labels).float().mean().item()
    log(f"oracle (the harness's): test acc {oracle_acc:.4f} ({time.perf_counter() - t:.1f} s)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        combos = {"all": [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)],
                  "fp32": [("fp32", False), ("fp32", True)], "none": []}[args.throughput]
        gcls = generator_class(args.generator)
        if "channels_last" not in gcls.Options.model_fields:
            combos = []  # the throughput rows compare memory formats
        n_sub = min(args.throughput_images, len(train))
        sub = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_sub])
        for precision, cl in combos:
            _, st = run_generator(sub, {**options, "epochs": 1, "channels_last": cl}, precision, args.seed, Path(tmp),
                                  args.device, gcls)
            rows.append((f"{precision}{' + channels_last' if cl else ''} ({n_sub:,} images, 1 epoch)",
                         st["images_per_s"], st["seconds"], None, None, None))
            log(f"{rows[-1][0]}: {st['images_per_s']:.0f} img/s")

        gen, st = run_generator(train, options, "fp32", args.seed, Path(tmp), args.device, gcls)
        log(f"train: {st['images_per_s']:.0f} img/s, {st['seconds']:.1f} s; "
            + ", ".join(f"{k} {v:.3g}" for k, v in st.items() if isinstance(v, float) and k.startswith("loss")))
        torch.manual_seed(args.seed + 1)
        labels = train.labels[torch.randint(len(train), (args.samples,))]
        t = time.perf_counter()
        fake = gen.sample(labels)
        sample_s = time.perf_counter() - t
        q = (oracle.predict(fake) == labels).float().mean().item()
        colours = dataset.measure_subgroups(fake, labels)
        u = colour_tv(colours, labels, train, len(bundle.subgroup_names))
        diversity = (class_diversity(fake, labels), class_diversity(train.images, train.labels))
        fake_hist = torch.bincount(colours[colours >= 0], minlength=len(bundle.subgroup_names)).tolist()
        fid_value, fid_note = None, "--no-fid"
        if not args.no_fid:
            from harness.errors import BenchError

            try:
                fid_value = harness_fid(fake, test.images, args.device)
            except BenchError as exc:  # the Inception weights are not installed
                fid_note = str(exc)
        rows.append((f"fp32, {options} ({len(train)} images)", st["images_per_s"], st["seconds"], q, u, fid_value))

    f = lambda v, fmt: "–" if v is None else format(v, fmt)
    print(f"{args.generator} on colored-mnist {ds_options}; {machine}")
    print(f"oracle test acc {oracle_acc:.3f}; sampling {args.samples} images {sample_s:.2f} s; "
          f"generated colours {fake_hist} (real train {torch.bincount(train.subgroups).tolist()}); "
          f"within-class diversity {diversity[0]:.3f} (real {diversity[1]:.3f})\n")
    print("| run | img/s | train s | q | u | FID |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ips, secs, qq, uu, fv in rows:
        print(f"| {name} | {ips:.0f} | {secs:.1f} | {f(qq, '.3f')} | {f(uu, '.3f')} | {f(fv, '.1f')} |")
    if fid_value is None:
        print(f"\nFID skipped: {fid_note}")
    else:
        print(f"\nFID: {args.samples:,} generated vs {len(test):,} real test images (biased high at this n).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
