"""The classifier training recipe, owned by the harness so that every entry is trained the same way (SPEC §1).

Images stay uint8; each batch is indexed, converted to float, resized to the network's input size, normalised and
augmented on the fly. Early stopping keeps the weights of the epoch with the best held-out accuracy.

On CUDA (the GPU fast path, docs/benchmarks.md): a unit's uint8 training set is moved to the GPU once when it fits
in :data:`DEVICE_DATA_FRACTION` of the free GPU memory, and batches are gathered, converted and augmented there;
``precision: auto`` is bf16 autocast (fp16 with a gradient scaler on GPUs without bf16); models and batches are
channels_last; the training loop never waits for the GPU inside an epoch (the losses are summed on the GPU and
read once per epoch, with the held-out accuracy, for the training curve); ``BENCH_COMPILE=1`` compiles the model
with :func:`torch.compile`.
On the CPU ``auto`` is fp32, and the batch order and arithmetic are the same as without the fast path.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from harness.imageset import CHUNK_ROWS, ImageSet, LazyImages
from harness.interfaces import Classifier, Runtime
from harness.specs import TrainingSpec


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from harness.errors import ConfigError

        raise ConfigError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on GPUs that compute it natively, fp16 on older GPUs, fp32 everywhere else.

    Never bf16 on a CPU unless asked for: CPUs without AVX-512-BF16 or AMX emulate it and run 8–25× *slower* than
    fp32 (measured on an AVX2 EPYC: DDPM training 12× slower), and a CPU default that depended on the CPU model
    would give different numbers for the same spec on two machines. ``--precision bf16`` still uses it.
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


#: Share of the free GPU memory a unit's uint8 training set may occupy on the GPU (the rest: weights, optimiser
#: state, activations). A set that does not fit stays in host memory and is copied batch by batch.
DEVICE_DATA_FRACTION = 0.25

#: ``BENCH_COMPILE=1``: compile classifier models (and the dcgan networks) with ``torch.compile`` (off by default:
#: the compilation, tens of seconds per model, does not pay for the short units of most runs; docs/benchmarks.md).
ENV_COMPILE = "BENCH_COMPILE"


def compile_enabled() -> bool:
    return os.environ.get(ENV_COMPILE, "0").strip().lower() in ("1", "true", "yes", "on")


def device_images(images: torch.Tensor | LazyImages, device: str | torch.device) -> torch.Tensor | None:
    """``images`` (uint8) copied to a CUDA ``device`` when they fit in :data:`DEVICE_DATA_FRACTION` of its free
    memory, else None (also on any other device: batches are then gathered in host memory)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if images.nbytes > DEVICE_DATA_FRACTION * free:
        return None
    if isinstance(images, torch.Tensor):
        return images.to(device)
    out = torch.empty(tuple(images.shape), dtype=torch.uint8, device=device)
    for start, chunk in zip(range(0, len(images), CHUNK_ROWS), images.chunks(CHUNK_ROWS)):
        out[start : start + chunk.shape[0]] = chunk.to(device)
    return out


def autocast(device: str, precision: str):
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@dataclass
class Preprocess:
    """uint8 batch → normalised float at the network's input size, channels_last, on the device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    device: str

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last)


def _to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``dev``; to a GPU through pinned memory, so the copy does not wait for the GPU."""
    return t if dev.type == "cpu" else t.pin_memory().to(dev, non_blocking=True)


def augment(images: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Vectorised uint8 augmentation: horizontal flip and/or random crop with 4-px reflection padding, on the
    images' device; the random offsets and flips come from ``generator`` (a CPU generator: the same draws on every
    device)."""
    if mode == "none":
        return images
    n, c, h, w = images.shape
    dev = images.device
    if "crop" in mode:
        pad = 4
        padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
        oy = _to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), dev)
        ox = _to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), dev)
        rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None].expand(n, c, h, w)
        cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :].expand(n, c, h, w)
        images = padded[
            torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
            rows, cols,
        ]
    if "flip" in mode:
        flip = _to_device(torch.rand(n, generator=generator) < 0.5, dev)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


class TrainedClassifier:
    """A classifier network with its preprocessing: what evaluation and filters use."""

    def __init__(self, name: str, plugin: Classifier, model: nn.Module, prep: Preprocess, precision: str,
                 batch_size: int = 512):
        self.name = name
        self.plugin = plugin
        self.model = model
        self.prep = prep
        self.precision = precision
        self.batch_size = batch_size

    def logits(self, images: torch.Tensor, *, train_mode: bool = False) -> torch.Tensor:
        """Batched logits on the CPU. ``train_mode`` switches only dropout layers on (MC dropout): BatchNorm keeps
        its running statistics, so predictions never depend on the batch."""
        self.model.eval()
        if train_mode:
            for m in self.model.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.train()
        outs = []
        with torch.no_grad(), autocast(self.prep.device, self.precision):
            for start in range(0, images.shape[0], self.batch_size):
                outs.append(self.model(self.prep(images[start : start + self.batch_size])).float())
        self.model.eval()
        return torch.cat(outs).cpu() if outs else torch.empty(0, 0)  # one copy to the host, not one per batch

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64)
        return self.logits(images).argmax(1)


def build_classifier(
    name: str,
    plugin: Classifier,
    *,
    num_classes: int,
    channels: int,
    image_size: int,
    device: str,
    precision: str,
    batch_size: int = 512,
) -> TrainedClassifier:
    size = plugin.input_size(image_size)
    model = plugin.build(num_classes=num_classes, channels=channels, image_size=image_size)
    model = model.to(device).to(memory_format=torch.channels_last)
    mean, std = plugin.normalization(channels)
    return TrainedClassifier(name, plugin, model, Preprocess(mean, std, size, device), precision, batch_size)


def _optimizer(params, recipe: TrainingSpec) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def split_holdout(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    n_val = max(1, int(round(n * fraction))) if n > 1 else 0
    return perm[n_val:], perm[:n_val]


def batches(index: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, index.numel(), batch_size):
        yield index[start : start + batch_size]


#: Points a generator's training curve keeps at most (:class:`Curves`): one per ``ceil(steps / CURVE_POINTS)`` steps.
CURVE_POINTS = 100


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Curves:
    """A generator's training curves (:class:`harness.engine.records.History`) at a fixed cadence: each optimizer
    step's values are added on the device into one buffer, read back once by :meth:`history`, so recording them
    never makes training wait for the GPU. A point is the mean of a series over ``every`` consecutive steps
    (``every = ceil(total_steps / points)``), placed at the last step of its window.

    ::

        curves = Curves(("loss_d", "loss_g"), total_steps, device)
        for ...:                                  # each optimizer step
            curves.add(loss_d, loss_g)            # tensors (detached here) or floats
        stats["history"] = curves.history()
    """

    def __init__(self, names: tuple[str, ...], total_steps: int, device: str | torch.device = "cpu", *,
                 points: int = CURVE_POINTS):
        self.names = tuple(names)
        self.total = total_steps
        self.every = max(1, -(-total_steps // max(points, 1)))
        self._sums = torch.zeros(max(1, -(-total_steps // self.every)), len(self.names), dtype=torch.float64,
                                 device=device)
        self.steps = 0

    def add(self, *values: torch.Tensor | float) -> None:
        """One optimizer step's values, in the order of ``names``; steps past ``total_steps`` are not recorded."""
        if len(values) != len(self.names):
            raise ValueError(f"Curves.add takes {len(self.names)} values ({', '.join(self.names)}), got {len(values)}")
        if self.steps < self.total:
            row = self.steps // self.every
            for i, v in enumerate(values):
                self._sums[row, i] += v.detach().double() if isinstance(v, torch.Tensor) else float(v)
        self.steps += 1

    def history(self) -> dict[str, Any]:
        """The curves as plain data (the fields of ``History``), for a ``fit`` statistics mapping."""
        recorded = min(self.steps, self.total)
        rows = -(-recorded // self.every)
        sums = self._sums[:rows].cpu().tolist()  # the one read from the device
        at = [min((r + 1) * self.every, recorded) for r in range(rows)]
        counts = [end - r * self.every for r, end in enumerate(at)]
        series = {name: [_finite(sums[r][i] / counts[r]) for r in range(rows)] for i, name in enumerate(self.names)}
        return {"axis": "step", "at": at, "series": series, "every": self.every}


class BatchSampler(Protocol):
    """Draws the batches of one training epoch: index tensors (CPU, int64) into the training set, taken from
    ``pool`` (the indices training may use), with the randomness of ``generator``."""

    def epoch(self, pool: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]: ...


def accuracy(clf: TrainedClassifier, data: ImageSet, images: torch.Tensor | None = None) -> float:
    """Top-1 accuracy on ``data`` (``images``: the same images already on the device)."""
    if len(data) == 0:
        return 0.0
    return (clf.predict(data.images if images is None else images) == data.labels).float().mean().item()


def train_classifier(
    clf: TrainedClassifier,
    data: ImageSet,
    recipe: TrainingSpec,
    runtime: Runtime,
    *,
    max_epochs: int | None = None,
    patience: int | None = None,
    val: ImageSet | None = None,
    max_steps: int | None = None,
    sampler: BatchSampler | None = None,
) -> Mapping[str, Any]:
    """Train ``clf.model`` on ``data`` with the recipe; early-stop on a held-out split of ``data`` (or on ``val``
    when given, training on all of ``data``). Returns statistics (the fields of
    :class:`harness.engine.records.TrainingStats`), with ``history``: per epoch the mean training loss and the
    held-out accuracy.

    ``max_steps``: train for exactly that many optimizer steps instead (a control twin's budget, SPEC §2): the
    same held-out split and data order, no early stopping, the weights after the last step kept. Epochs are cut
    short at the budget; ``max_epochs`` does not apply.

    ``sampler``: draws each epoch's batches from the training indices instead of a shuffled pass over them (e.g.
    STAR's stratified batches, :class:`harness.engine.reparation.StratifiedBatchSampler`)."""
    gen = torch.Generator().manual_seed(runtime.seed)
    if val is None:
        train_idx, val_idx = split_holdout(len(data), recipe.val_fraction, gen)
        val = data.subset(val_idx)
    else:
        train_idx = torch.arange(len(data))
    epochs = max_epochs or recipe.max_epochs
    patience = patience or recipe.patience
    steps_per_epoch = -(-train_idx.numel() // recipe.batch_size)
    if max_steps is not None:
        epochs = max(1, -(-max_steps // max(steps_per_epoch, 1)))
    dev = torch.device(clf.prep.device)
    # The GPU fast path: the uint8 images (and the held-out ones) on the GPU once, batches gathered there.
    images = device_images(data.images, dev)
    val_images = device_images(val.images, dev) if images is not None else None
    where = dev if images is not None else torch.device("cpu")
    images = data.images if images is None else images
    labels = data.labels.to(where)
    net = torch.compile(clf.model) if compile_enabled() else clf.model
    opt = _optimizer(clf.model.parameters(), recipe)
    scaler = torch.amp.GradScaler(dev.type, enabled=clf.precision == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_epoch, best_state, bad = -1.0, 0, None, 0
    seen, steps, best_steps, t0 = 0, 0, 0, time.perf_counter()
    train_seconds = 0.0
    curve: dict[str, list[float | None]] = {"train_loss": [], "val_acc": []}  # one point per epoch
    with runtime.reporter.task(f"train {clf.name}", total=epochs * steps_per_epoch) as task:
        for epoch in range(1, epochs + 1):
            clf.model.train()
            t_epoch = time.perf_counter()
            if sampler is None:
                order = _to_device(train_idx[torch.randperm(train_idx.numel(), generator=gen)], where)
                epoch_batches = batches(order, recipe.batch_size)
            else:
                epoch_batches = (_to_device(b, where) for b in sampler.epoch(train_idx, recipe.batch_size, gen))
            epoch_loss, epoch_steps = torch.zeros((), dtype=torch.float64, device=dev), 0  # summed on the device
            for idx in epoch_batches:  # nothing in this loop waits for the GPU
                if max_steps is not None and steps >= max_steps:
                    break
                x = augment(images[idx], recipe.augment, gen)
                y = labels[idx].to(dev, non_blocking=True)
                with autocast(clf.prep.device, clf.precision):
                    loss = loss_fn(net(clf.prep(x)).float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                epoch_loss += loss.detach().double()
                epoch_steps += 1
                seen += idx.numel()
                steps += 1
                task.advance(1)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)  # the epoch's time includes its queued GPU work
            train_seconds += time.perf_counter() - t_epoch
            acc = accuracy(clf, val, val_images)
            curve["train_loss"].append(_finite(epoch_loss.item() / epoch_steps) if epoch_steps else None)
            curve["val_acc"].append(acc)
            if max_steps is not None:  # a fixed budget: the last weights are the kept ones
                best_acc, best_epoch, best_steps = acc, epoch, steps
                if steps >= max_steps:
                    break
                continue
            if acc > best_acc:
                best_acc, best_epoch, best_steps, bad = acc, epoch, steps, 0
                best_state = copy.deepcopy(clf.model.state_dict())
            else:
                bad += 1
                if bad >= patience:
                    task.advance(steps_per_epoch * (epochs - epoch))
                    break
    if best_state is not None and max_steps is None:
        clf.model.load_state_dict(best_state)
    clf.model.eval()
    return {
        "epochs": epoch,
        "best_epoch": best_epoch,
        "val_acc": best_acc,
        "stopped_early": epoch < epochs,
        "train_images": int(train_idx.numel()),
        "images_seen": seen,
        "seconds": time.perf_counter() - t0,
        "images_per_s": seen / train_seconds if train_seconds > 0 else None,
        "steps": steps,
        "best_steps": best_steps,
        "history": {"axis": "epoch", "at": list(range(1, len(curve["val_acc"]) + 1)), "series": curve},
    }
