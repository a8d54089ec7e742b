"""The classifier training recipe, owned by the harness so that every entry is trained the same way (SPEC §1).

Images stay uint8 in memory; each batch is indexed, moved to the device, converted to float, resized to the
network's input size and normalised on the fly. Early stopping keeps the weights of the epoch with the best
held-out accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.imageset import ImageSet
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
    """``auto``: bf16 where the hardware computes it natively, else fp16 on older GPUs and fp32 on CPUs.

    CPUs without AVX-512-BF16 or AMX emulate bf16 and run it several times *slower* than fp32 (measured here on an
    AVX2 EPYC: DDPM training 12× slower), so ``auto`` only picks bf16 on CPUs that have it.
    """
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return "bf16"
    return "fp32"


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


def augment(images: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Vectorised uint8 augmentation: horizontal flip and/or random crop with 4-px reflection padding."""
    if mode == "none":
        return images
    n, c, h, w = images.shape
    if "crop" in mode:
        pad = 4
        padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, c, h, w)
        cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, c, h, w)
        images = padded[
            torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols
        ]
    if "flip" in mode:
        flip = torch.rand(n, generator=generator) < 0.5
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
                outs.append(self.model(self.prep(images[start : start + self.batch_size])).float().cpu())
        self.model.eval()
        return torch.cat(outs) if outs else torch.empty(0, 0)

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


def accuracy(clf: TrainedClassifier, data: ImageSet) -> float:
    if len(data) == 0:
        return 0.0
    return (clf.predict(data.images) == data.labels).float().mean().item()


def train_classifier(
    clf: TrainedClassifier,
    data: ImageSet,
    recipe: TrainingSpec,
    runtime: Runtime,
    *,
    max_epochs: int | None = None,
    patience: int | None = None,
    val: ImageSet | None = None,
) -> Mapping[str, Any]:
    """Train ``clf.model`` on ``data`` with the recipe; early-stop on a held-out split of ``data`` (or on ``val``
    when given, training on all of ``data``). Returns statistics."""
    gen = torch.Generator().manual_seed(runtime.seed)
    if val is None:
        train_idx, val_idx = split_holdout(len(data), recipe.val_fraction, gen)
        val = data.subset(val_idx)
    else:
        train_idx = torch.arange(len(data))
    epochs = max_epochs or recipe.max_epochs
    patience = patience or recipe.patience
    opt = _optimizer(clf.model.parameters(), recipe)
    scaler = torch.amp.GradScaler(torch.device(clf.prep.device).type, enabled=clf.precision == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_epoch, best_state, bad = -1.0, 0, None, 0
    seen, t0 = 0, time.perf_counter()
    train_seconds = 0.0
    steps_per_epoch = -(-train_idx.numel() // recipe.batch_size)
    with runtime.reporter.task(f"train {clf.name}", total=epochs * steps_per_epoch) as task:
        for epoch in range(1, epochs + 1):
            clf.model.train()
            t_epoch = time.perf_counter()
            order = train_idx[torch.randperm(train_idx.numel(), generator=gen)]
            for idx in batches(order, recipe.batch_size):
                x = augment(data.images[idx], recipe.augment, gen)
                y = data.labels[idx].to(clf.prep.device, non_blocking=True)
                with autocast(clf.prep.device, clf.precision):
                    loss = loss_fn(clf.model(clf.prep(x)).float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                seen += idx.numel()
                task.advance(1)
            train_seconds += time.perf_counter() - t_epoch
            acc = accuracy(clf, val)
            if acc > best_acc:
                best_acc, best_epoch, bad = acc, epoch, 0
                best_state = copy.deepcopy(clf.model.state_dict())
            else:
                bad += 1
                if bad >= patience:
                    task.advance(steps_per_epoch * (epochs - epoch))
                    break
    if best_state is not None:
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
    }
