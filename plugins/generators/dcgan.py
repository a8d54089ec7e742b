"""Class-conditional DCGAN (Radford et al. 2015) for 28–64 px images, tuned to learn fast on a CPU.

Architecture (``n`` = number of ×2 upsampling stages, ``s0 = 7`` for 28 px, else ``4``; ``image_size = s0·2^n``):

- **G**: ``[z ; embed(y)]`` → linear → ``(w·2^(n-1)) × s0 × s0``, BN, ReLU → ``n`` stride-2 transposed convs
  (4×4), halving channels, BN + ReLU between them, the last one to ``C`` channels with ``tanh``.
  28 px, ``width=32``: 64@7 → 32@14 → C@28.
- **D**: ``n`` stride-2 convs (4×4), ``C → w → 2w → …``, LeakyReLU(0.2), no normalisation besides optional
  spectral norm, then a *projection* head (Miyato & Koyama 2018) on the flattened ``s0 × s0`` features:
  ``D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩``.
- Hinge loss (or the non-saturating ``bce``), Adam, TTUR (``lr_d > lr_g``), exponential moving average of G's
  weights used for sampling, with "standing" BatchNorm statistics recomputed for the averaged weights.

Fake images are conditioned on the labels of the real batch they are compared with, so the generator is trained
on the data's class distribution (which matters for the study), not a uniform one.

Training keeps the data as uint8 and converts each batch to ``[-1, 1]`` on the fly; one ``torch.randperm`` per
epoch, no DataLoader. bf16 autocast (``runtime.precision``) and channels_last are used where they pay off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from harness.hookspecs import Generator, Options, Runtime
from harness.imageset import ImageSet, from_unit_float

_SAMPLE_BATCH = 512


def _stages(image_size: int) -> tuple[int, int]:
    """``(s0, n)`` with ``image_size = s0 · 2**n``, ``s0 ∈ {7, 4}``, ``n ≥ 1``."""
    for s0 in (7, 4):
        n = round(math.log2(image_size / s0)) if image_size >= 2 * s0 else 0
        if n >= 1 and s0 * 2**n == image_size:
            return s0, n
    raise ValueError(f"dcgan supports image sizes 7·2^n or 4·2^n (e.g. 28, 32, 64), got {image_size}")


class _G(nn.Module):
    def __init__(self, *, z_dim: int, num_classes: int, channels: int, image_size: int, width: int, embed_dim: int):
        super().__init__()
        self.s0, n = _stages(image_size)
        self.c0 = width * 2 ** (n - 1)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(z_dim + embed_dim, self.c0 * self.s0 * self.s0, bias=False)
        self.bn0 = nn.BatchNorm2d(self.c0)
        layers: list[nn.Module] = []
        c = self.c0
        for i in range(n):
            last = i == n - 1
            out = channels if last else c // 2
            layers.append(nn.ConvTranspose2d(c, out, 4, 2, 1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], dim=1)).view(-1, self.c0, self.s0, self.s0)
        h = F.relu(self.bn0(h.contiguous(memory_format=torch.channels_last)))
        return self.net(h)


class _D(nn.Module):
    def __init__(self, *, num_classes: int, channels: int, image_size: int, width: int, spectral_norm: bool):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        s0, n = _stages(image_size)
        layers: list[nn.Module] = []
        c_in, c = channels, width
        for _ in range(n):
            layers += [sn(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            c_in, c = c, c * 2
        self.net = nn.Sequential(*layers)
        feat = c_in * s0 * s0
        self.psi = sn(nn.Linear(feat, 1))
        self.embed = sn(nn.Embedding(num_classes, feat))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.net(x).flatten(1)
        return self.psi(phi).squeeze(1) + (self.embed(y) * phi).sum(1)


class DCGAN(Generator):
    """Class-conditional DCGAN with a projection discriminator; see the module docstring."""

    class Options(Options):
        """Defaults are the recommended CPU settings for 28 px Colorized MNIST (docs/generators.md)."""

        width: int = Field(32, ge=4, description="channels of D's first conv; G's last hidden layer has this many")
        z_dim: int = Field(64, ge=1)
        embed_dim: int = Field(32, ge=1, description="size of G's class embedding, concatenated to z")
        epochs: int = Field(30, ge=1)
        batch_size: int = Field(64, ge=2)
        lr_g: float = Field(2e-4, gt=0)
        lr_d: float = Field(4e-4, gt=0)
        betas: tuple[float, float] = (0.5, 0.999)
        spectral_norm: bool = True
        loss: Literal["hinge", "bce"] = "hinge"
        ema: bool = True
        ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
        channels_last: bool = True

        @model_validator(mode="after")
        def _check_betas(self) -> DCGAN.Options:
            if not all(0.0 <= b < 1.0 for b in self.betas):
                raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
            return self

    options: DCGAN.Options

    def __init__(
        self,
        options: DCGAN.Options,
        *,
        num_classes: int,
        channels: int,
        image_size: int,
        class_names,
        runtime: Runtime,
    ):
        super().__init__(
            options,
            num_classes=num_classes,
            channels=channels,
            image_size=image_size,
            class_names=class_names,
            runtime=runtime,
        )
        o = options
        _stages(image_size)  # fail early on unsupported sizes
        self.device = torch.device(runtime.device)
        gkw = dict(
            z_dim=o.z_dim,
            num_classes=num_classes,
            channels=channels,
            image_size=image_size,
            width=o.width,
            embed_dim=o.embed_dim,
        )
        self.G = _G(**gkw).to(self.device)
        self.D = _D(
            num_classes=num_classes,
            channels=channels,
            image_size=image_size,
            width=o.width,
            spectral_norm=o.spectral_norm,
        ).to(self.device)
        self.G_ema = _G(**gkw).to(self.device) if o.ema else None
        if self.G_ema is not None:
            self.G_ema.load_state_dict(self.G.state_dict())
            self.G_ema.requires_grad_(False)
        if o.channels_last:
            for m in (self.G, self.D, self.G_ema):
                if m is not None:
                    m.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ training

    def _autocast(self):
        dtype = self.runtime.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    def _d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.options.loss == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def _g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return -fake.mean() if self.options.loss == "hinge" else F.softplus(-fake).mean()

    def fit(self, data: ImageSet) -> Mapping[str, float]:
        o = self.options
        c, h, w = data.shape
        if (c, h, w) != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"dcgan was built for {self.channels}×{self.image_size}² images, got {c}×{h}×{w}")
        n = len(data)
        if n < 2:
            raise ValueError("dcgan needs at least 2 training images")
        bs = min(o.batch_size, n)
        steps_per_epoch = n // bs  # drop the ragged last batch: BatchNorm and the step count stay regular
        images, labels = data.images, data.labels
        G, D = self.G, self.D
        G.train()
        D.train()
        opt_g = torch.optim.Adam(G.parameters(), lr=o.lr_g, betas=o.betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=o.lr_d, betas=o.betas)
        ema_params = list(self.G_ema.parameters()) if self.G_ema is not None else []
        g_params = list(G.parameters())

        sum_d = sum_g = 0.0
        seen = step = 0
        last_d = last_g = float("nan")
        t0 = time.perf_counter()
        with self.runtime.reporter.task("dcgan: train", total=o.epochs * steps_per_epoch) as task:
            for _ in range(o.epochs):
                perm = torch.randperm(n)
                ep_d = ep_g = 0.0
                for i in range(steps_per_epoch):
                    idx = perm[i * bs : (i + 1) * bs]
                    x = self._to_input(images[idx])
                    y = labels[idx].to(self.device)
                    z = torch.randn(bs, o.z_dim, device=self.device)

                    # D step: real vs fake, the fake conditioned on the real batch's labels.
                    with self._autocast():
                        fake = G(z, y)
                        loss_d = self._d_loss(D(x, y).float(), D(fake.detach(), y).float())
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()

                    # G step on the same fake batch (saves a forward pass); D's weight gradients are not needed.
                    D.requires_grad_(False)
                    with self._autocast():
                        loss_g = self._g_loss(D(fake, y).float())
                    opt_g.zero_grad(set_to_none=True)
                    loss_g.backward()
                    opt_g.step()
                    D.requires_grad_(True)

                    step += 1
                    if ema_params:
                        # Warm-up so the average is not dominated by the random initialisation on short runs.
                        decay = min(o.ema_decay, (1.0 + step) / (10.0 + step))
                        with torch.no_grad():
                            torch._foreach_lerp_(ema_params, [p.detach() for p in g_params], 1.0 - decay)
                    ep_d += loss_d.item()
                    ep_g += loss_g.item()
                    seen += bs
                    task.advance(1)
                last_d, last_g = ep_d / steps_per_epoch, ep_g / steps_per_epoch
                sum_d += ep_d
                sum_g += ep_g
        if self.G_ema is not None:
            self._standing_stats(labels)
        seconds = time.perf_counter() - t0
        return {
            "loss_d": last_d,
            "loss_g": last_g,
            "loss_d_mean": sum_d / max(step, 1),
            "loss_g_mean": sum_g / max(step, 1),
            "steps": float(step),
            "images_seen": float(seen),
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else float("nan"),
        }

    @torch.no_grad()
    def _standing_stats(self, labels: torch.Tensor, batches: int = 8) -> None:
        """Recompute the EMA generator's BatchNorm statistics for its own weights (cumulative average)."""
        G = self.G_ema
        bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        G.train()
        bs = max(self.options.batch_size, 128)
        for _ in range(batches):
            y = labels[torch.randint(len(labels), (bs,))].to(self.device)
            with self._autocast():
                G(torch.randn(bs, self.options.z_dim, device=self.device), y)
        for m in bns:
            m.momentum = 0.1
        G.eval()

    # ------------------------------------------------------------------ sampling and state

    @property
    def _sampler(self) -> _G:
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        G = self._sampler
        G.eval()
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        out = torch.empty(len(labels), self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        for start in range(0, len(labels), _SAMPLE_BATCH):
            y = labels[start : start + _SAMPLE_BATCH].to(self.device)
            z = torch.randn(len(y), self.options.z_dim, device=self.device)
            with self._autocast():
                x = G(z, y)
            out[start : start + len(y)] = from_unit_float(x).cpu()
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"G.{k}": v.detach().cpu().contiguous() for k, v in self.G.state_dict().items()}
        if self.G_ema is not None:
            state.update({f"G_ema.{k}": v.detach().cpu().contiguous() for k, v in self.G_ema.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for prefix, module in (("G.", self.G), ("G_ema.", self.G_ema)):
            if module is None:
                continue
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not sub:
                raise KeyError(f"state has no {prefix}* entries")
            module.load_state_dict(sub)
        self.G.eval()
        if self.G_ema is not None:
            self.G_ema.eval()
