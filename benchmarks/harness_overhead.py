"""Throughput of training inside the harness against a bare PyTorch loop on the same model, data and batch size.

    .venv/bin/python benchmarks/harness_overhead.py [--epochs 2] [--classifier lenet] [--device cpu]

*Classifier*: the harness path is :func:`harness.engine.training.train_classifier` (uint8 batches converted, resized and
normalised on the fly; per-epoch held-out evaluation for early stopping, which the bare loop does not do, is
excluded from the rate by the recipe itself). The bare loop holds the data pre-converted to normalised float and
runs ``forward / loss / backward / step``, with the same precision and memory format.

*Generator*: the harness path is the whole ``generator`` work unit of the loop (:func:`harness.engine.stages.execute`:
building D_{t-1} from the run directory, ``fit``, saving the weights with safetensors); the bare loop is the
same DCGAN networks, loss, optimisers, EMA and batch size written as a plain loop over pre-converted float data.

Prints one table: images/s for each, and the ratio harness / bare (≥ 0.9 is the target).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import loop  # noqa: E402
from harness.engine import plan, stages  # noqa: E402
from harness.hookspecs import Runtime  # noqa: E402
from harness.plugin.manager import create_plugin_manager  # noqa: E402
from harness.engine.progress import NullReporter  # noqa: E402
from harness.specs import TrainingSpec, build_spec, resolve_spec  # noqa: E402
from harness.engine.training import autocast, build_classifier, resolve_precision, train_classifier  # noqa: E402


def bench_classifier(name: str, data, device: str, precision: str, epochs: int, batch_size: int) -> tuple[float, float]:
    plugins = create_plugin_manager()
    cls, variant = plugins.registry("classifiers").get(name)
    plugin = cls(cls.Options(), variant=variant)
    c, h, _ = data.train.shape
    num_classes = len(data.class_names)
    recipe = TrainingSpec(max_epochs=epochs, patience=epochs, batch_size=batch_size, val_fraction=0.02)

    torch.manual_seed(0)
    clf = build_classifier(name, plugin, num_classes=num_classes, channels=c, image_size=h, device=device,
                           precision=precision)
    runtime = Runtime(device, precision, 0, NullReporter(), Path(tempfile.mkdtemp()))
    stats = train_classifier(clf, data.train, recipe, runtime)
    harness_rate = stats["images_per_s"]

    torch.manual_seed(0)
    bare = build_classifier(name, plugin, num_classes=num_classes, channels=c, image_size=h, device=device,
                            precision=precision)
    n_train = stats["train_images"]
    x_all = bare.prep(data.train.images[:n_train])  # pre-converted: the bare loop pays nothing per batch
    y_all = data.train.labels[:n_train].to(device)
    model = bare.model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n_train, device=device)
        for start in range(0, n_train, batch_size):
            idx = perm[start : start + batch_size]
            with autocast(device, precision):
                loss = F.cross_entropy(model(x_all[idx]).float(), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += idx.numel()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    bare_rate = seen / (time.perf_counter() - t0)
    return harness_rate, bare_rate


def bench_generator(data, device: str, precision: str, epochs: int, batch_size: int, out: Path) -> tuple[float, float]:
    plugins = create_plugin_manager()
    cfg = {
        "dataset": {"name": "colored-mnist", "options": {"source": "embedded"}},
        "generator": {"name": "dcgan", "options": {"epochs": epochs, "batch_size": batch_size}},
        "classifiers": ["lenet"],
        "loop": {"generations": 1},
        "metrics": {"fid": {"backbone": "none"}},
        "device": device,
        "precision": precision,
        "out": str(out),
    }
    spec = resolve_spec(build_spec(None, cfg), plugins)
    run_dir = loop.prepare_run_dir(spec)
    ctx = stages.RunContext(spec, run_dir, plugins)
    _ = ctx.data  # the dataset is loaded once per process, before any unit; not part of a unit's cost
    u = plan.unit("generator", 0, 1)
    t0 = time.perf_counter()
    result = stages.execute(ctx, u)
    harness_rate = result["train"]["images_seen"] / (time.perf_counter() - t0)

    # The bare loop: the same networks, loss, optimisers and EMA, over pre-converted float data.
    torch.manual_seed(0)
    gen = ctx.new_generator(ctx.runtime(u, out / "bare"))
    o = gen.options
    G, D = gen.G.train(), gen.D.train()
    x_all = data.train.images.to(device).float().div(127.5).sub(1).contiguous(memory_format=torch.channels_last)
    y_all = data.train.labels.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=o.lr_g, betas=o.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=o.lr_d, betas=o.betas)
    ema = list(gen.G_ema.parameters()) if gen.G_ema is not None else []
    params = list(G.parameters())
    n, seen, step = len(x_all), 0, 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for i in range(n // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x, y = x_all[idx], y_all[idx]
            z = torch.randn(batch_size, o.z_dim, device=device)
            with autocast(device, precision):
                fake = G(z, y)
                loss_d = F.relu(1 - D(x, y).float()).mean() + F.relu(1 + D(fake.detach(), y).float()).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            D.requires_grad_(False)
            with autocast(device, precision):
                loss_g = -D(fake, y).float().mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            step += 1
            if ema:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - min(o.ema_decay, (1 + step) / (10 + step)))
            loss_d.item(), loss_g.item()  # the plugin logs both losses every step; so does the bare loop
            seen += batch_size
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return harness_rate, seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--generator-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classifier", action="append", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    device = args.device
    precision = resolve_precision(args.precision, device)
    plugins = create_plugin_manager()
    ds_cls, _ = plugins.registry("datasets").get("colored-mnist")
    data = ds_cls(ds_cls.Options(source="embedded")).load()
    rows = []
    for name in args.classifier or ["lenet", "timm:test_resnet"]:
        h, b = bench_classifier(name, data, device, precision, args.epochs, args.batch_size)
        rows.append((f"classifier {name}", h, b))
    with tempfile.TemporaryDirectory() as tmp:
        h, b = bench_generator(data, device, precision, args.generator_epochs, args.batch_size, Path(tmp))
    rows.append(("generator dcgan (whole unit)", h, b))
    header = f"device={device} precision={precision} threads={torch.get_num_threads()} batch={args.batch_size} " \
             f"data=colored-mnist embedded ({len(data.train)} train images, 3×28×28)"
    lines = [header, f"{'what':34} {'harness img/s':>14} {'bare img/s':>12} {'ratio':>7}"]
    for what, h, b in rows:
        lines.append(f"{what:34} {h:14.0f} {b:12.0f} {h / b:7.2f}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
