"""Throughput of every work unit of the ``paper`` preset on CIFAR-shaped data, and what it projects for the study.

On random uint8 images of CIFAR's shape (3×32×32, 20 classes: cifar20) it measures, through the harness's own code
paths, per unit: dcgan training, sampling, each of the five paper classifiers (training and evaluation), the
oracle's evaluation of the candidates, the uncertainty filter over the five classifiers, and the FID/KID feature
pass (the TF-2015 Inception when its weights are installed, else the random-conv test backbone, labelled) and the
FID/KID arithmetic. For each: images/s, peak GPU memory and the share of wall time the GPU was busy (kernels and
copies, from a second, profiled pass; n/a on the CPU). Then:

- the projected wall time of one ``paper`` generation on cifar20 (50,000 train / 10,000 test images) and of the
  whole study (3 seeds × (generation 0 + 10 generations) + the oracle): every unit the harness plans for the
  preset, costed from the measured rates and the preset's sizes, with the classifier epochs early stopping ends
  at as an assumption (``--epochs``, printed);
- the harness-vs-bare-loop ratio of classifier training (the same model, batch, precision and memory format,
  the bare loop over data pre-converted on the device);
- on a GPU with Ray installed, the speed-up of running several LeNet-sized classifier units concurrently on one
  GPU (Ray fractional ``num_gpus``, as ``stage_resources = {"classifier:lenet" = {num_gpus = 0.25}}`` does).

    .venv/bin/python benchmarks/gpu.py                          # the GPU (sized to finish in minutes on an H100)
    .venv/bin/python benchmarks/gpu.py --device cpu --tiny      # CI: every unit at a tiny size, < 1 min
    BENCH_COMPILE=1 .venv/bin/python benchmarks/gpu.py          # with torch.compile

Random pixels give throughput, nothing else: no accuracy or FID value here means anything.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.engine.plan import plan  # noqa: E402
from harness.engine.progress import NullReporter  # noqa: E402
from harness.engine.training import (  # noqa: E402
    autocast,
    build_classifier,
    compile_enabled,
    resolve_device,
    resolve_precision,
    train_classifier,
)
from harness.imageset import ImageSet  # noqa: E402
from harness.interfaces import FilterContext, Runtime  # noqa: E402
from harness.measure import fid as fidm  # noqa: E402
from harness.plugin.manager import default_plugins  # noqa: E402
from harness.specs import RunSpec, TrainingSpec, build_spec, resolve_spec  # noqa: E402

NUM_CLASSES = 20
SHAPE = (3, 32, 32)
#: cifar20 = CIFAR-100 with its 20 superclasses: 50,000 train and 10,000 test images, 5 subgroups per class.
CIFAR_TRAIN, CIFAR_TEST, SUBGROUPS = 50_000, 10_000, 5

#: Images per measurement (full size: a few seconds per unit on an H100; tiny: every unit in a CPU CI job).
SIZES = {
    "full": {"train": 16_384, "sample": 16_384, "eval": 16_384, "fid": 4096, "dcgan_epochs": 1, "fraction_images": 8192},
    "tiny": {"train": 40, "sample": 32, "eval": 16, "fid": 8, "dcgan_epochs": 1, "fraction_images": 64},
}


# --------------------------------------------------------------------------------------------------- measuring


@dataclass
class Row:
    unit: str
    images: int
    seconds: float
    peak_gib: float | None = None
    busy: float | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _busy_share(fn: Callable[[], object], device: str) -> float | None:
    """Share of ``fn``'s wall time with a kernel or copy running on the GPU (union of their intervals)."""
    if not device.startswith("cuda"):
        return None
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, -math.inf
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return min(busy / wall_us, 1.0) if wall_us > 0 else None


def measure(unit: str, images: int, fn: Callable[[], object], device: str, *, profile_fn: Callable[[], object] | None
            = None, note: str = "") -> tuple[Row, object]:
    """Time ``fn`` (synchronised), its peak GPU memory, and the busy share of ``profile_fn`` (a shorter pass)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    busy = _busy_share(profile_fn or fn, device)
    return Row(unit, images, seconds, peak, busy, note), out


# --------------------------------------------------------------------------------------------------- the units


def random_set(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % NUM_CLASSES
    return ImageSet.create(images, labels[torch.randperm(n, generator=g)])


def make_classifier(plugins, ref, device: str, precision: str, num_classes: int, eval_batch: int):
    cls, variant = plugins.registry("classifiers").get(ref.name)
    plugin = cls(cls.Options.model_validate(ref.options), variant=variant)
    torch.manual_seed(0)
    return build_classifier(ref.name, plugin, num_classes=num_classes, channels=SHAPE[0], image_size=SHAPE[1],
                            device=device, precision=precision, batch_size=eval_batch)


def bare_rate(clf, data: ImageSet, recipe: TrainingSpec, device: str, precision: str) -> float:
    """Images/s of a plain loop training ``clf``'s architecture (fresh weights) on pre-converted device data."""
    model = clf.model
    with torch.no_grad():
        x_all = clf.prep(data.images)  # normalised float, channels_last, on the device: free for the loop
    y_all = data.labels.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    n, bs = len(data), recipe.batch_size
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    perm = torch.randperm(n, device=device)
    for start in range(0, n, bs):
        idx = perm[start : start + bs]
        with autocast(device, precision):
            loss = F.cross_entropy(model(x_all[idx]).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return n / (time.perf_counter() - t0)


def fractional_gpu(plugins, spec: RunSpec, device: str, precision: str, n: int, shares: tuple[int, ...]) -> list[str]:
    """Wall time of 4 LeNet classifier units as Ray tasks with ``num_gpus = 1/k`` (k at once) on one GPU."""
    if not device.startswith("cuda"):
        return ["fractional GPU (Ray num_gpus < 1): n/a on the CPU"]
    try:
        import ray
    except ImportError:
        return ["fractional GPU: n/a (Ray is not installed: pip install -e '.[ray]')"]
    ref = next(c for c in spec.classifiers if c.name == "lenet")
    recipe = spec.training.model_copy(update={"max_epochs": 2, "patience": 2})

    def unit(seed: int) -> float:
        data = random_set(n, seed)
        clf = make_classifier(default_plugins(), ref, "cuda", precision, NUM_CLASSES, spec.training.eval_batch_size)
        t0 = time.perf_counter()
        train_classifier(clf, data, recipe, Runtime("cuda", precision, seed, NullReporter(), Path(tempfile.mkdtemp())))
        return time.perf_counter() - t0

    lines = []
    ray.init(num_gpus=1, num_cpus=max(4, max(shares)), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        task = ray.remote(unit)
        units = 4
        ray.get([task.options(num_gpus=1.0 / max(shares)).remote(s) for s in range(max(shares))])  # warm workers
        walls = {}
        for k in shares:
            t0 = time.perf_counter()
            ray.get([task.options(num_gpus=1.0 / k, num_cpus=1).remote(s) for s in range(units)])
            walls[k] = time.perf_counter() - t0
        for k in shares:
            lines.append(f"fractional GPU: {units} lenet units ({n} images × 2 epochs each), num_gpus = 1/{k}: "
                         f"{walls[k]:.1f} s wall, speed-up {walls[shares[0]] / walls[k]:.2f}× vs 1/{shares[0]}")
    finally:
        ray.shutdown()
    return lines


# --------------------------------------------------------------------------------------------------- main


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {len(os.sched_getaffinity(0))} CPUs"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--tiny", action="store_true", help="every unit at a tiny size (CI)")
    ap.add_argument("--epochs", type=float, default=15.0,
                    help="assumed classifier/oracle epochs until early stopping (max 50, patience 5) [15]")
    ap.add_argument("--fid-backbone", default="auto", choices=["auto", fidm.INCEPTION, fidm.RANDOM_TEST],
                    help="auto: the Inception when installed (the random-conv backbone with --tiny)")
    ap.add_argument("--fractions", default="1,2,4", help="classifier units per GPU for the fractional-GPU test")
    ap.add_argument("--skip-bare", action="store_true", help="no bare-loop comparison")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    size = SIZES["tiny" if args.tiny else "full"]
    plugins = default_plugins()

    def paper_defaults(name: str) -> dict:
        cls, _ = plugins.registry("datasets").get(name)
        return dict(cls.paper_defaults)

    spec = resolve_spec(build_spec("paper", {"dataset": {"name": "cifar20"}}, paper_defaults=paper_defaults), plugins)
    recipe = spec.training.model_copy(update={"max_epochs": 1, "patience": 1})
    rows: list[Row] = []
    ratios: list[tuple[str, float, float]] = []
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp())
    runtime = Runtime(device, precision, 0, NullReporter(), tmp)
    train, cands, test = random_set(size["train"], 1), random_set(size["sample"], 2), random_set(size["eval"], 3)

    # dcgan: training and sampling
    gcls, _ = plugins.registry("generators").get(spec.generator.name)
    gopts = gcls.Options.model_validate({**spec.generator.options, "epochs": size["dcgan_epochs"]})
    torch.manual_seed(0)
    gen = gcls(gopts, num_classes=NUM_CLASSES, channels=SHAPE[0], image_size=SHAPE[1],
               class_names=tuple(f"c{i}" for i in range(NUM_CLASSES)), runtime=runtime)
    small = train.subset(torch.arange(min(len(train), max(256, len(train) // 8))))
    row, stats = measure("dcgan: train", len(train) * size["dcgan_epochs"], lambda: gen.fit(train), device,
                         profile_fn=lambda: gen.fit(small))
    row.images = int(stats["images_seen"])
    rows.append(row)
    row, _ = measure("dcgan: sample", len(cands), lambda: gen.sample(cands.labels), device,
                     profile_fn=lambda: gen.sample(cands.labels[: max(64, len(cands) // 8)]))
    rows.append(row)

    # the five paper classifiers: training (1 epoch, the paper recipe) and evaluation
    classifiers = []
    for ref in spec.classifiers:
        clf = make_classifier(plugins, ref, device, precision, NUM_CLASSES, spec.training.eval_batch_size)
        r = Runtime(device, precision, 0, NullReporter(), tmp)
        row, stats = measure(f"classifier {ref.name}: train", len(train), lambda: train_classifier(clf, train, recipe, r),
                             device, profile_fn=lambda: train_classifier(clf, small, recipe, r))
        row.seconds = stats["images_seen"] / stats["images_per_s"]  # training only (the held-out pass: below)
        row.images = int(stats["images_seen"])
        rows.append(row)
        row, _ = measure(f"classifier {ref.name}: evaluate", len(test), lambda: clf.predict(test.images), device)
        rows.append(row)
        classifiers.append(clf)
        if not args.skip_bare:
            fresh = make_classifier(plugins, ref, device, precision, NUM_CLASSES, spec.training.eval_batch_size)
            ratios.append((ref.name, rows[-2].rate, bare_rate(fresh, train, recipe, device, precision)))

    # the oracle (cifar20: ResNet-50 over class × subgroup) judging the candidates
    oref = spec.metrics.oracle.classifier
    oracle = make_classifier(plugins, oref, device, precision, NUM_CLASSES * SUBGROUPS, spec.training.eval_batch_size)
    row, _ = measure(f"oracle {oref.name}: evaluate", len(cands), lambda: oracle.logits(cands.images), device)
    rows.append(row)

    # the uncertainty filter over the five classifiers
    fcls, _ = plugins.registry("filters").get(spec.filter.name)
    filt = fcls(fcls.Options.model_validate(spec.filter.options))
    context = FilterContext(1, tuple(classifiers), tuple(f"c{i}" for i in range(NUM_CLASSES)), runtime, tmp / "review")
    row, _ = measure(f"filter {spec.filter.name} (5 classifiers)", len(cands), lambda: filt.score(cands, context),
                     device)
    rows.append(row)

    # FID/KID: the feature pass, and the arithmetic
    backbone = args.fid_backbone
    if backbone == "auto":
        backbone = fidm.RANDOM_TEST
        if not args.tiny:
            try:
                fidm.preflight(fidm.INCEPTION)
                backbone = fidm.INCEPTION
            except Exception:  # noqa: BLE001 - the weights are not installed: the labelled fallback
                pass
    extractor = fidm.get_extractor(backbone, device)
    fid_images = cands.images[: size["fid"]]
    label = "" if extractor.comparable else " (random-conv TEST backbone, NOT Inception)"
    bs = fidm.batch_size_for(device)
    row, feats = measure(f"FID features, batch {bs}{label}", len(fid_images),
                         lambda: fidm.extract_features(extractor, fid_images, device), device)
    rows.append(row)
    if device.startswith("cuda") and not args.tiny:
        for big in (500, 1000):
            row, _ = measure(f"FID features, batch {big}{label}", len(fid_images),
                             lambda: fidm.extract_features(extractor, fid_images, device, batch_size=big), device)
            rows.append(row)
    n_fid = spec.metrics.fid.samples
    g = torch.Generator().manual_seed(0)
    real_f = torch.randn(n_fid if not args.tiny else 64, extractor.feature_dim, generator=g)
    fake_f = torch.randn(n_fid if not args.tiny else 64, extractor.feature_dim, generator=g)

    def fid_kid():
        fidm.frechet_distance(real_f, fake_f)
        fidm.kernel_inception_distance(real_f, fake_f, spec.metrics.fid.kid_subset_size, device=device)

    row, _ = measure(f"FID + KID arithmetic ({len(real_f)} × {extractor.feature_dim}, per generation)", len(real_f),
                     fid_kid, device)
    rows.append(row)
    fractions = fractional_gpu(plugins, spec, device, precision, size["fraction_images"],
                               tuple(int(k) for k in args.fractions.split(",")))

    # ---------------------------------------------------------------- report
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_name()
    print(f"device {device} ({name}), precision {precision}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, torch.compile {'on' if compile_enabled() else 'off'}, "
          f"{'tiny' if args.tiny else 'full'} sizes; random CIFAR-shaped data (3×32×32, {NUM_CLASSES} classes)")
    print(f"| unit | images | seconds | images/s | peak GPU memory | GPU busy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        peak = f"{r.peak_gib:.2f} GiB" if r.peak_gib is not None else "n/a"
        busy = f"{100 * r.busy:.0f} %" if r.busy is not None else "n/a"
        print(f"| {r.unit} | {r.images} | {r.seconds:.2f} | {r.rate:,.0f} | {peak} | {busy} |")

    rate = {r.unit: r.rate for r in rows}
    fid_rate = rows[[i for i, r in enumerate(rows) if r.unit.startswith("FID features")][0]].rate
    fid_math = rows[-1].seconds
    n_real = CIFAR_TRAIN
    n_mix = int(math.floor(spec.loop.mix_ratio * n_real + 0.5))
    d_t = n_real + n_mix  # D_t from generation 1 on (queue full from the start: mix is capped by mix_ratio)
    samples = spec.loop.samples_per_generation or n_real
    e = args.epochs
    val = spec.training.val_fraction

    def classifier_unit(name: str, size_d: int) -> float:
        train_s = (1 - val) * size_d * e / rate[f"classifier {name}: train"]
        eval_s = (val * size_d * e + CIFAR_TEST) / rate[f"classifier {name}: evaluate"]
        return train_s + eval_s

    dcgan_epochs = spec.generator.options["epochs"]
    cost = {  # seconds of one unit of each stage, from the measured rates
        "oracle": lambda u: (1 - val) * n_real * e / rate[f"classifier {oref.name}: train"]
        + CIFAR_TEST / rate[f"oracle {oref.name}: evaluate"],
        "generator": lambda u: (n_real if u.generation == 1 else d_t) * dcgan_epochs / rate["dcgan: train"],
        "sample": lambda u: samples / rate["dcgan: sample"],
        "filter": lambda u: samples / rate[f"filter {spec.filter.name} (5 classifiers)"],
        "mix": lambda u: 0.0,
        "classifier": lambda u: classifier_unit(u.name, n_real if u.generation == 0 else d_t),
        "control": lambda u: classifier_unit(u.name, n_real),  # the control twin trains on D_real
        "evaluate": lambda u: samples / rate[f"oracle {oref.name}: evaluate"] + min(samples, n_fid) / fid_rate
        + fid_math,
    }
    units = plan(spec)
    unknown = sorted({u.stage for u in units} - set(cost))
    if unknown:
        raise SystemExit(f"the plan has stages this projection does not cost: {unknown}")
    first = spec.seeds[0]
    per_stage: dict[str, float] = {}
    for u in units:
        if u.seed == first and u.generation == 1:
            per_stage[u.stage] = per_stage.get(u.stage, 0.0) + cost[u.stage](u)
    generation = sum(per_stage.values())
    real_fid = min(CIFAR_TEST, spec.metrics.fid.real_samples) / fid_rate  # once per run (cached)
    study = sum(cost[u.stage](u) for u in units) + real_fid
    print()
    print(f"projected, `paper` on cifar20 ({n_real:,} train / {CIFAR_TEST:,} test; D_t = {d_t:,} images; "
          f"{samples:,} candidates; dcgan {dcgan_epochs} epochs; classifiers and oracle {e:g} epochs each "
          f"(assumed, early stopping); every planned unit, one at a time on this device):")
    print(f"  one generation: {generation / 60:.1f} min = "
          + " + ".join(f"{stage} {sec:.0f} s" for stage, sec in per_stage.items() if sec > 0))
    print(f"  whole study ({len(units)} units: {len(spec.seeds)} seeds × (generation 0 + {spec.loop.generations} "
          f"generations) + oracle + real FID features): {study / 3600:.2f} h")
    if ratios:
        print("harness vs bare loop, classifier training (1 epoch, batch "
              f"{recipe.batch_size}, same model/precision/memory format):")
        for n, h, b in ratios:
            print(f"  {n}: harness {h:,.0f} img/s, bare {b:,.0f} img/s, ratio {h / b:.2f}")
    for line in fractions:
        print(line)
    print(f"(benchmark wall time {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
