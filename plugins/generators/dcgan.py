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


class _CBN(nn.Module):
    """BatchNorm whose per-channel gain and bias are linear in the conditioning vector ``[z ; embed(y)]``
    (conditional BN with a shared embedding and the latent fed to every layer, as in BigGAN)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels)
        self.bias = nn.Linear(cond_dim, channels)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        g = 1.0 + self.gain(cond)[:, :, None, None]
        return self.bn(h) * g + self.bias(cond)[:, :, None, None]


class _G(nn.Module):
    def __init__(self, *, z_dim: int, num_classes: int, channels: int, image_size: int, width: int, embed_dim: int):
        super().__init__()
        import os
        self.cbn = os.environ.get("GCBN") == "1"
        self.tanh = os.environ.get("LINOUT") != "1"
        self.s0, n = _stages(image_size)
        self.c0 = width * 2 ** (n - 1)
        cond = z_dim + embed_dim
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(cond, self.c0 * self.s0 * self.s0, bias=False)
        norm = (lambda c: _CBN(c, cond)) if self.cbn else nn.BatchNorm2d
        self.norms = nn.ModuleList([norm(self.c0)])
        self.convs = nn.ModuleList()
        c = self.c0
        for i in range(n):
            last = i == n - 1
            out = channels if last else c // 2
            self.convs.append(nn.ConvTranspose2d(c, out, 4, 2, 1, bias=last))
            if not last:
                self.norms.append(norm(out))
            c = out

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([z, self.embed(y)], dim=1)
        h = self.fc(cond).view(-1, self.c0, self.s0, self.s0).contiguous(memory_format=torch.channels_last)
        for norm, conv in zip(self.norms, self.convs):
            h = conv(F.relu(norm(h, cond) if self.cbn else norm(h)))
        return torch.tanh(h) if self.tanh else h


def _minibatch_std(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one feature map holding the batch's feature standard deviation (Karras et al. 2018, ProGAN):
    D can then see when a fake batch lacks variety (e.g. every digit the same colour), which fights mode dropping."""
    b, _, hh, ww = h.shape
    g = min(group, b)
    while b % g:
        g -= 1
    s = h.float().view(g, -1, *h.shape[1:]).var(0, unbiased=False).add(1e-8).sqrt().mean(dim=(1, 2, 3))
    return torch.cat([h, s.to(h.dtype).view(-1, 1, 1, 1).repeat(g, 1, hh, ww)], dim=1)


def _diff_augment(x: torch.Tensor, shift: int, cutout: int) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) without colour jitter, applied to real and fake alike: a random translation
    by up to ``shift`` pixels (the border filled with -1, i.e. black) and a random ``cutout × cutout`` hole
    (filled with -1). Differentiable, per sample, no Python loop."""
    b, c, h, w = x.shape
    dev = x.device
    if shift > 0:
        xp = F.pad(x, (shift, shift, shift, shift), value=-1.0)
        dy = torch.randint(0, 2 * shift + 1, (b, 1), device=dev)
        dx = torch.randint(0, 2 * shift + 1, (b, 1), device=dev)
        rows = (torch.arange(h, device=dev)[None] + dy)[:, :, None]  # B×H×1
        cols = (torch.arange(w, device=dev)[None] + dx)[:, None, :]  # B×1×W
        x = xp[torch.arange(b, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if cutout > 0:
        cy = torch.randint(0, h + 1 - cutout, (b, 1, 1), device=dev)
        cx = torch.randint(0, w + 1 - cutout, (b, 1, 1), device=dev)
        ys = torch.arange(h, device=dev)[None, :, None]
        xs = torch.arange(w, device=dev)[None, None, :]
        hole = ((ys >= cy) & (ys < cy + cutout) & (xs >= cx) & (xs < cx + cutout))[:, None]
        x = x.masked_fill(hole, -1.0)
    return x


class _D(nn.Module):
    def __init__(
        self, *, num_classes: int, channels: int, image_size: int, width: int, spectral_norm: bool, mbstd: bool
    ):
        super().__init__()
        self.mbstd = mbstd
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        s0, n = _stages(image_size)
        layers: list[nn.Module] = []
        c_in, c = channels, width
        import os
        dbn = os.environ.get("DBN") == "1"
        self._concat = os.environ.get("DCOND") == "concat"
        self._dp = float(os.environ.get("DDROP", "0"))
        self._nc = num_classes
        if self._concat:
            c_in = channels + num_classes
        for i in range(n):
            layers += [sn(nn.Conv2d(c_in, c, 4, 2, 1, bias=not (dbn and i > 0)))]
            if dbn and i > 0:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, c = c, c * 2
        self.net = nn.Sequential(*layers)
        self._mode = os.environ.get("MBSTD_MODE", "map"); self._g = int(os.environ.get("MBG", "4"))
        self._pool = os.environ.get("POOLPROJ") == "1"
        feat = (c_in + mbstd) * s0 * s0 if self._mode == "map" else c_in * s0 * s0 + (c_in if mbstd else 0)
        psi, embed = nn.Linear(feat, 1), nn.Embedding(num_classes, c_in if self._pool else feat)
        # Embedding's default N(0, 1) makes the projection term ~sqrt(feat) times larger than the rest of D at
        # initialisation; Xavier keeps it on the scale of ψ (as in Miyato & Koyama's code).
        nn.init.xavier_uniform_(embed.weight)
        self.psi, self.embed = sn(psi), sn(embed)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._concat:
            oh = F.one_hot(y, self._nc).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, oh], 1)
        h = self.net(x)
        if not self.mbstd:
            phi = h.flatten(1)
        elif self._mode == "map":
            phi = _minibatch_std(h, self._g).flatten(1)
        else:
            b = h.shape[0]; g = min(self._g, b)
            while b % g: g -= 1
            sd = h.float().view(g, -1, *h.shape[1:]).var(0, unbiased=False).add(1e-8).sqrt().mean(dim=(2, 3))
            phi = torch.cat([h.flatten(1), sd.repeat(g, 1).to(h.dtype)], 1)
        if self._dp:
            phi = F.dropout(phi, self._dp, self.training)
        if self._concat:
            return self.psi(phi).squeeze(1)
        if self._pool:
            return self.psi(phi).squeeze(1) + (self.embed(y) * h.sum((2, 3))).sum(1)
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
        minibatch_std: bool = Field(True, description="minibatch standard-deviation feature in D (fights mode dropping)")
        augment_shift: float = Field(0.125, ge=0, lt=0.5, description="DiffAugment translation, fraction of the side")
        augment_cutout: float = Field(0.0, ge=0, lt=1, description="DiffAugment cutout square, fraction of the side")
        mode_seeking: float = Field(0.0, ge=0, description="weight of the mode-seeking term (Mao et al. 2019)")
        r1_gamma: float = Field(0.0, ge=0, description="R1 penalty on real images (Mescheder et al. 2018)")
        r1_every: int = Field(1, ge=1, description="apply R1 every k steps, scaled by k (lazy regularisation)")
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
            mbstd=o.minibatch_std,
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

        shift = round(o.augment_shift * self.image_size)
        cutout = round(o.augment_cutout * self.image_size)
        aug = (lambda t: _diff_augment(t, shift, cutout)) if shift or cutout else (lambda t: t)
        sum_d = sum_g = 0.0
        seen = step = 0
        last_d = last_g = float("nan")
        t0 = time.perf_counter()
        import os
        grp = int(os.environ.get("CGROUP", "0"))
        if grp:
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels, minlength=self.num_classes)
            starts = torch.cumsum(counts, 0) - counts
            m = bs // grp
        with self.runtime.reporter.task("dcgan: train", total=o.epochs * steps_per_epoch) as task:
            for _ in range(o.epochs):
                perm = torch.randperm(n)
                ep_d = ep_g = 0.0
                for i in range(steps_per_epoch):
                    if grp:
                        a = perm[i * m : (i + 1) * m]
                        ya = labels[a]
                        r = (torch.rand(grp - 1, m) * counts[ya]).long()
                        idx = torch.cat([a[None], order[starts[ya] + r]]).flatten()
                    else:
                        idx = perm[i * bs : (i + 1) * bs]
                    x = self._to_input(images[idx])
                    y = labels[idx].to(self.device)
                    z = torch.randn(bs, o.z_dim, device=self.device)
                    yf = torch.cat([y[: bs // 2], y[: bs - bs // 2]]) if o.mode_seeking else y

                    # D step: real vs fake, the fake conditioned on the real batch's labels.
                    with self._autocast():
                        fake = G(z, yf)
                        r1 = o.r1_gamma > 0 and step % o.r1_every == 0
                        if r1:
                            x.requires_grad_(True)
                        d_real = D(aug(x), y).float()
                        loss_d = self._d_loss(d_real, D(aug(fake.detach()), yf).float())
                    if r1:
                        (grad,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
                        penalty = grad.float().pow(2).sum(dim=(1, 2, 3)).mean()
                        loss_d = loss_d + 0.5 * o.r1_gamma * o.r1_every * penalty
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()

                    # G step on the same fake batch (saves a forward pass); D's weight gradients are not needed.
                    D.requires_grad_(False)
                    with self._autocast():
                        loss_g = self._g_loss(D(aug(fake), yf).float())
                        if o.mode_seeking:
                            h = bs // 2
                            ratio = (fake[:h] - fake[h : 2 * h]).abs().float().mean() / (z[:h] - z[h : 2 * h]).abs().mean()
                            loss_g = loss_g - o.mode_seeking * ratio.clamp(max=1.0)
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
