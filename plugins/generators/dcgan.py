"""Class-conditional DCGAN (Radford et al. 2015) for 28–64 px images, tuned to learn fast on a CPU.

Sizes: ``image_size = s0 · 2^n`` with ``s0 = 7`` (28, 56 px) or ``4`` (32, 64 px), ``n ≥ 1`` upsampling stages.

- **G**: ``c = [z ; embed(y)]`` → linear → ``(w·2^(n-1)) × s0 × s0`` → ``n`` stride-2 4×4 transposed convs
  halving the channels, the last one to ``C`` channels, BatchNorm + ReLU before each, ``tanh`` output.
  ``conditioning="cbn"`` also makes every BN conditional (gain and bias linear in ``c``, as in BigGAN);
  ``output="linear"`` drops the tanh (clamped only when sampling, as in StyleGAN). 28 px, ``width=32``:
  64@7 → 32@14 → C@28.
- **D**: ``n`` stride-2 4×4 convs ``C → w → 2w → …`` with LeakyReLU(0.2) (optional spectral norm), then a
  projection head (Miyato & Koyama 2018) on the flattened ``s0 × s0`` features,
  ``D(x, y) = ψ(φ(x)) + ⟨embed(y), φ(x)⟩``. Optional minibatch standard-deviation feature (Karras et al. 2018)
  over groups of images **of the same class** (``minibatch_std = k``: a batch is then ``B/k`` anchors plus
  ``k − 1`` random images of each anchor's class; in a mixed batch the std is dominated by differences between
  classes).
- Non-saturating (``bce``) or ``hinge`` loss, one D and one G step per batch, Adam; a capped mode-seeking term
  (on by default), optional R1 penalty and DiffAugment translation/cutout; an exponential moving average of G's
  weights is used for sampling, with BatchNorm statistics recomputed for the averaged weights.

The fakes are conditioned on the real batch's labels, so G trains on the data's class distribution (which
matters for the study), never a uniform one. The data stay uint8 and each batch is converted to ``[-1, 1]`` on
the fly (one ``randperm`` per epoch, no DataLoader). On a GPU the uint8 set is moved there once per unit when it
fits (:func:`harness.engine.training.device_images`), the losses are read once per epoch (no per-step host
synchronisation; the training curves of D's and G's losses, a point per N steps, once at the end) and samples are
drawn in batches of 8,192.

Precision: autocast with ``runtime.autocast_dtype`` (obeyed as given). On a CPU without native bf16 (AVX2 only)
bf16 is emulated and 8–13× slower here: run such machines in fp32 (docs/generators.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from harness.engine.training import Curves, device_images
from harness.interfaces import Generator, Options, Runtime
from harness.imageset import ImageSet, from_unit_float

_SAMPLE_BATCH = 512
#: On a GPU: larger batches, the images kept on the GPU until the end (one copy to the host).
_SAMPLE_BATCH_GPU = 8192


def _stages(image_size: int) -> tuple[int, int]:
    """``(s0, n)`` with ``image_size = s0 · 2**n``, ``s0 ∈ {7, 4}``, ``n ≥ 1``."""
    for s0 in (7, 4):
        if image_size >= 2 * s0 and image_size % s0 == 0:
            n = round(math.log2(image_size // s0))
            if s0 * 2**n == image_size:
                return s0, n
    raise ValueError(f"dcgan supports image sizes 7·2^n or 4·2^n (e.g. 28, 32, 64), got {image_size}")


class _CBN(nn.Module):
    """BatchNorm whose per-channel gain and bias are linear in the conditioning vector ``[z ; embed(y)]``."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels)
        self.bias = nn.Linear(cond_dim, channels)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.bn(h) * (1.0 + self.gain(cond)[:, :, None, None]) + self.bias(cond)[:, :, None, None]


class _G(nn.Module):
    def __init__(
        self,
        *,
        z_dim: int,
        num_classes: int,
        channels: int,
        image_size: int,
        width: int,
        embed_dim: int,
        conditioning: str,
        output: str,
        channels_last: bool,
    ):
        super().__init__()
        self.s0, n = _stages(image_size)
        self.c0 = width * 2 ** (n - 1)
        self.cbn = conditioning == "cbn"
        self.tanh = output == "tanh"
        self.channels_last = channels_last
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
        h = self.fc(cond).view(-1, self.c0, self.s0, self.s0)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for norm, conv in zip(self.norms, self.convs):
            h = conv(F.relu(norm(h, cond) if self.cbn else norm(h)))
        return torch.tanh(h) if self.tanh else h


def _minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """Append one feature map: the standard deviation of the features over a group, averaged (ProGAN).

    Groups are strided, ``{j, j + M, j + 2M, …}`` with ``M = B / group``, which is how :meth:`DCGAN.fit` lays out
    same-class images.
    """
    b, _, hh, ww = h.shape
    g = min(group, b)
    while b % g:
        g -= 1
    s = h.float().view(g, -1, *h.shape[1:]).var(0, unbiased=False).add(1e-8).sqrt().mean(dim=(1, 2, 3))
    return torch.cat([h, s.to(h.dtype).view(-1, 1, 1, 1).repeat(g, 1, hh, ww)], dim=1)


class _D(nn.Module):
    def __init__(
        self, *, num_classes: int, channels: int, image_size: int, width: int, spectral_norm: bool, mbstd: int
    ):
        super().__init__()
        self.mbstd = mbstd
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        s0, n = _stages(image_size)
        layers: list[nn.Module] = []
        c_in, c = channels, width
        for _ in range(n):
            layers += [sn(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            c_in, c = c, c * 2
        self.net = nn.Sequential(*layers)
        feat = (c_in + (1 if mbstd else 0)) * s0 * s0
        psi, embed = nn.Linear(feat, 1), nn.Embedding(num_classes, feat)
        # nn.Embedding's default N(0, 1) makes the projection term ~sqrt(feat) times larger than the rest of D at
        # initialisation, which slowed learning a lot; Xavier (as in Miyato & Koyama's code) keeps it on ψ's scale.
        nn.init.xavier_uniform_(embed.weight)
        self.psi, self.embed = sn(psi), sn(embed)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        phi = (_minibatch_std(h, self.mbstd) if self.mbstd else h).flatten(1)
        return self.psi(phi).squeeze(1) + (self.embed(y) * phi).sum(1)


def _diff_augment(x: torch.Tensor, shift: int, cutout: int) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) without colour jitter, applied to real and fake alike: a random translation
    by up to ``shift`` px and a random ``cutout × cutout`` hole, both filled with -1 (black). Per sample, no loop."""
    b, _, h, w = x.shape
    dev = x.device
    if shift > 0:
        xp = F.pad(x, (shift, shift, shift, shift), value=-1.0)
        dy = torch.randint(0, 2 * shift + 1, (b, 1), device=dev)
        dx = torch.randint(0, 2 * shift + 1, (b, 1), device=dev)
        rows = (torch.arange(h, device=dev)[None] + dy)[:, :, None]
        cols = (torch.arange(w, device=dev)[None] + dx)[:, None, :]
        x = xp[torch.arange(b, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if cutout > 0:
        cy = torch.randint(0, h + 1 - cutout, (b, 1, 1), device=dev)
        cx = torch.randint(0, w + 1 - cutout, (b, 1, 1), device=dev)
        ys = torch.arange(h, device=dev)[None, :, None]
        xs = torch.arange(w, device=dev)[None, None, :]
        x = x.masked_fill(((ys >= cy) & (ys < cy + cutout) & (xs >= cx) & (xs < cx + cutout))[:, None], -1.0)
    return x


class DCGAN(Generator):
    """Class-conditional DCGAN with a projection discriminator; see the module docstring and docs/generators.md."""

    class Options(Options):
        """Defaults: the configuration measured on 28 px Colorized MNIST on a 2-core CPU (docs/generators.md)."""

        width: int = Field(32, ge=4, description="channels of D's first conv and of G's last hidden layer")
        z_dim: int = Field(64, ge=1)
        embed_dim: int = Field(32, ge=1, description="size of G's class embedding")
        conditioning: Literal["concat", "cbn"] = Field(
            "cbn", description="G: concat = [z; embed(y)] at the input; cbn = also in every BN (gain and bias)"
        )
        output: Literal["tanh", "linear"] = Field(
            "tanh", description="G's last activation (linear: clamped to [-1, 1] when sampling)"
        )
        epochs: int = Field(10, ge=1)
        batch_size: int = Field(64, ge=2)
        lr_g: float = Field(2e-4, gt=0)
        lr_d: float = Field(2e-4, gt=0)
        betas: tuple[float, float] = (0.5, 0.999)
        loss: Literal["bce", "hinge"] = Field("bce", description="bce = non-saturating GAN loss")
        spectral_norm: bool = False
        minibatch_std: int = Field(
            4, ge=0, description="same-class group size of the minibatch-std feature; 0 = off (true = 4, false = 0)"
        )
        r1_gamma: float = Field(0.0, ge=0, description="R1 penalty on real images (Mescheder et al. 2018); 0 = off")
        r1_every: int = Field(4, ge=1, description="apply R1 every k steps, scaled by k (lazy regularisation)")
        augment_shift: float = Field(0.0, ge=0, lt=0.5, description="DiffAugment translation, fraction of the side")
        augment_cutout: float = Field(0.0, ge=0, lt=1, description="DiffAugment cutout square, fraction of the side")
        mode_seeking: float = Field(1.0, ge=0, description="weight of the capped mode-seeking term; 0 = off")
        ema: bool = True
        ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
        channels_last: bool = Field(True, description="memory format (no speed difference measured on CPU)")

        @field_validator("minibatch_std", mode="before")
        @classmethod
        def _bool_group(cls, v):
            return (4 if v else 0) if isinstance(v, bool) else v  # earlier versions took a bool

        @model_validator(mode="after")
        def _check(self) -> DCGAN.Options:
            if not all(0.0 <= b < 1.0 for b in self.betas):
                raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
            if self.minibatch_std and self.batch_size % self.minibatch_std:
                raise ValueError(
                    f"batch_size ({self.batch_size}) must be a multiple of minibatch_std ({self.minibatch_std})"
                )
            return self

    options: DCGAN.Options

    def __init__(
        self,
        options: DCGAN.Options,
        *,
        num_classes: int,
        channels: int,
        image_size: int,
        class_names: Sequence[str],
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
        self.channels_last = o.channels_last
        gkw = dict(
            z_dim=o.z_dim,
            num_classes=num_classes,
            channels=channels,
            image_size=image_size,
            width=o.width,
            embed_dim=o.embed_dim,
            conditioning=o.conditioning,
            output=o.output,
            channels_last=self.channels_last,
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
        self.G_ema = None
        if o.ema:
            self.G_ema = _G(**gkw).to(self.device)
            self.G_ema.load_state_dict(self.G.state_dict())
            self.G_ema.requires_grad_(False)
        if self.channels_last:
            for m in (self.G, self.D, self.G_ema):
                if m is not None:
                    m.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ training

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.options.loss == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def _g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return -fake.mean() if self.options.loss == "hinge" else F.softplus(-fake).mean()

    def fit(self, data: ImageSet) -> Mapping[str, Any]:
        o = self.options
        n = self.check_data(data, "dcgan", 2)
        bs = min(o.batch_size, n)
        k = o.minibatch_std if bs >= o.minibatch_std else 0  # tiny data sets: plain batches
        if k:
            bs -= bs % k
        steps_per_epoch = max(n // bs, 1)  # the ragged last batch is dropped: BatchNorm and step counts stay regular
        images, labels = data.images, data.labels
        if k:  # class-grouped batches: an anchor plus k - 1 random images of its class
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels, minlength=self.num_classes)
            starts = torch.cumsum(counts, 0) - counts
            m = bs // k

        def draw(perm: torch.Tensor, i: int) -> torch.Tensor:
            """The indices of batch ``i`` of an epoch, drawn on the CPU."""
            if not k:
                return perm[i * bs : (i + 1) * bs]
            a = perm[i * m : (i + 1) * m]
            ya = labels[a]
            r = (torch.rand(k - 1, m) * counts[ya]).long()
            return torch.cat([a[None], order[starts[ya] + r]]).flatten()

        # The GPU fast path: the uint8 set on the GPU once when it fits, batches gathered there, an epoch's indices
        # drawn at once and copied in one go (on a GPU nothing else in the loop draws from the CPU generator, so
        # the batches are the same as when drawn step by step, which the CPU does between its noise draws).
        gpu_images = device_images(images, self.device)
        if gpu_images is not None:
            images, gpu_labels = gpu_images, labels.to(self.device)
        G, D = self.G, self.D
        G.train()
        D.train()
        opt_g = torch.optim.Adam(G.parameters(), lr=o.lr_g, betas=o.betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=o.lr_d, betas=o.betas)
        scale_g, scale_d = self.runtime.grad_scaler(), self.runtime.grad_scaler()  # pass-through unless fp16
        g_params = list(G.parameters())
        ema_params = list(self.G_ema.parameters()) if self.G_ema is not None else []
        shift = round(o.augment_shift * self.image_size)
        cutout = round(o.augment_cutout * self.image_size)
        aug = (lambda t: _diff_augment(t, shift, cutout)) if shift or cutout else (lambda t: t)

        sum_d = sum_g = 0.0
        seen = step = 0
        last_d = last_g = float("nan")
        curves = Curves(("loss_d", "loss_g"), o.epochs * steps_per_epoch, self.device)  # read once, at the end
        t0 = time.perf_counter()
        with self.runtime.reporter.task("dcgan: train", total=o.epochs * steps_per_epoch) as task:
            for _ in range(o.epochs):
                perm = torch.randperm(n)
                # Losses summed on the device in float64 (the same sums as Python floats): read once per epoch.
                ep_d = torch.zeros((), dtype=torch.float64, device=self.device)
                ep_g = torch.zeros((), dtype=torch.float64, device=self.device)
                if gpu_images is not None:
                    epoch_idx = torch.stack([draw(perm, i) for i in range(steps_per_epoch)]).pin_memory()
                    epoch_idx = epoch_idx.to(self.device, non_blocking=True)
                for i in range(steps_per_epoch):
                    if gpu_images is not None:
                        idx = epoch_idx[i]
                        y = gpu_labels[idx]
                    else:
                        idx = draw(perm, i)
                        y = labels[idx].to(self.device)
                    x = self._to_input(images[idx])
                    b = len(idx)
                    z = torch.randn(b, o.z_dim, device=self.device)
                    # Mode seeking pairs fake i with fake i + b/2 under the same label: the first half's labels
                    # are used twice (the fakes still follow the data's class distribution).
                    yf = torch.cat([y[: b // 2], y[: b - b // 2]]) if o.mode_seeking else y

                    # D step: real vs fake, the fake conditioned on the real batch's labels.
                    r1 = o.r1_gamma > 0 and step % o.r1_every == 0
                    if r1:
                        x.requires_grad_(True)
                    with self.runtime.autocast():
                        fake = G(z, yf)
                        d_real = D(aug(x), y).float()
                        loss_d = self._d_loss(d_real, D(aug(fake.detach()), yf).float())
                    if r1:
                        (grad,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
                        loss_d = loss_d + 0.5 * o.r1_gamma * o.r1_every * grad.float().pow(2).sum((1, 2, 3)).mean()
                    opt_d.zero_grad(set_to_none=True)
                    scale_d.scale(loss_d).backward()
                    scale_d.step(opt_d)
                    scale_d.update()

                    # G step on the same fake batch (saves a forward pass); D's weight gradients are not needed.
                    D.requires_grad_(False)
                    with self.runtime.autocast():
                        loss_g = self._g_loss(D(aug(fake), yf).float())
                        if o.mode_seeking:  # diversity-sensitive term (Mao et al. 2019; Yang et al. 2019), capped
                            h2 = b // 2
                            dz = (z[:h2] - z[h2 : 2 * h2]).abs().mean()
                            ratio = (fake[:h2] - fake[h2 : 2 * h2]).abs().float().mean() / dz
                            loss_g = loss_g - o.mode_seeking * ratio.clamp(max=1.0)
                    opt_g.zero_grad(set_to_none=True)
                    scale_g.scale(loss_g).backward()
                    scale_g.step(opt_g)
                    scale_g.update()
                    D.requires_grad_(True)

                    step += 1
                    if ema_params:
                        # Warm-up so the average is not dominated by the random initialisation on short runs.
                        decay = min(o.ema_decay, (1.0 + step) / (10.0 + step))
                        with torch.no_grad():
                            torch._foreach_lerp_(ema_params, [p.detach() for p in g_params], 1.0 - decay)
                    ep_d += loss_d.detach().double()
                    ep_g += loss_g.detach().double()
                    curves.add(loss_d, loss_g)
                    seen += len(idx)
                    task.advance(1)
                ep_d, ep_g = ep_d.item(), ep_g.item()
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
            "parameters_g": float(sum(p.numel() for p in G.parameters())),
            "parameters_d": float(sum(p.numel() for p in D.parameters())),
            "history": curves.history(),
        }

    @torch.no_grad()
    def _standing_stats(self, labels: torch.Tensor, batches: int = 8) -> None:
        """Recompute the EMA generator's BatchNorm statistics for its own weights (cumulative average over
        ``batches`` batches drawn with the data's labels), since the running statistics belong to the raw G."""
        G = self.G_ema
        batch_size = max(self.options.batch_size, 128)
        bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        G.train()
        for _ in range(batches):
            y = labels[torch.randint(len(labels), (batch_size,))].to(self.device)
            with self.runtime.autocast():
                G(torch.randn(batch_size, self.options.z_dim, device=self.device), y)
        for m in bns:
            m.momentum = 0.1
        G.eval()

    # ------------------------------------------------------------------ sampling and state

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        G = self.G_ema if self.G_ema is not None else self.G
        G.eval()
        labels = self.check_labels(labels)
        batch = _SAMPLE_BATCH if self.device.type == "cpu" else _SAMPLE_BATCH_GPU
        out = torch.empty(len(labels), self.channels, self.image_size, self.image_size, dtype=torch.uint8,
                          device=self.device)
        for start in range(0, len(labels), batch):
            y = labels[start : start + batch].to(self.device)
            z = torch.randn(len(y), self.options.z_dim, device=self.device)
            with self.runtime.autocast():
                x = G(z, y)
            out[start : start + len(y)] = from_unit_float(x)
        return out.cpu()

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
                raise KeyError(f"dcgan state has no {prefix}* entries")
            module.load_state_dict(sub)
            module.eval()
