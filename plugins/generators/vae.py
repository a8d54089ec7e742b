"""Conditional variational autoencoder (Kingma & Welling 2014; Sohn et al. 2015) for 28–64 px images.

Wyllie et al. (fairness feedback loops) generate with VAEs of latent size 20; that is the default here.

Architecture (``n`` stride-2 stages, ``s0 = 7`` for 28 px, else ``4``; ``image_size = s0·2^n``):

- **Encoder** ``q(z | x, y)``: ``n`` stride-2 convs (4×4) ``C → w → 2w → …`` with LeakyReLU(0.2), flattened,
  concatenated with the class code, then two linear heads for ``μ`` and ``log σ²``.
- **Decoder** ``p(x | z, y)``: ``[z ; code(y)]`` → linear → ``(w·2^(n-1)) × s0 × s0`` → ``n`` stride-2
  transposed convs halving the channels (ReLU between), the last to ``C`` channels: per-pixel logits.
- Class code: ``onehot`` (the classic CVAE) or a learned ``embedding`` of size ``embed_dim``.
- Loss per image: reconstruction summed over pixels — ``bce`` (Bernoulli likelihood on pixels in ``[0, 1]``,
  the usual MNIST choice) or ``mse`` (sum of squared errors of ``sigmoid(logits)``) — plus ``beta × KL``
  (β-VAE, Higgins et al. 2017; ``beta = 1`` is the ELBO). Adam.
- Sampling: ``z ~ N(0, temperature² I)``, image = ``sigmoid(decoder(z, y))``, the decoder's mean, not a
  Bernoulli draw (the usual way to show VAE samples).

Training keeps the data as uint8 and converts each batch to ``[0, 1]`` on the fly; one ``torch.randperm`` per
epoch, no DataLoader. Autocast follows ``runtime.precision`` (the loss is computed in float32).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from harness.engine.training import Curves
from harness.errors import ConfigError
from harness.interfaces import Generator, Options
from harness.imageset import ImageSet

_SAMPLE_BATCH = 512


def _stages(image_size: int) -> tuple[int, int]:
    """``(s0, n)`` with ``image_size = s0 · 2**n``, ``s0 ∈ {7, 4}``, ``n ≥ 1``."""
    for s0 in (7, 4):
        n = round(math.log2(image_size / s0)) if image_size >= 2 * s0 else 0
        if n >= 1 and s0 * 2**n == image_size:
            return s0, n
    raise ConfigError(f"vae supports image sizes 7·2^n or 4·2^n (e.g. 28, 32, 56, 64), got {image_size}")


class _CVAE(nn.Module):
    def __init__(
        self, *, channels: int, image_size: int, num_classes: int, width: int, latent_dim: int,
        conditioning: str, embed_dim: int,
    ):
        super().__init__()
        self.s0, n = _stages(image_size)
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if conditioning == "embedding" else None
        code = embed_dim if self.embed is not None else num_classes

        enc: list[nn.Module] = []
        c_in, c = channels, width
        for _ in range(n):
            enc += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c_in, c = c, c * 2
        self.encoder = nn.Sequential(*enc)
        feat = c_in * self.s0 * self.s0
        self.mu = nn.Linear(feat + code, latent_dim)
        self.logvar = nn.Linear(feat + code, latent_dim)

        self.c0 = c_in
        self.fc = nn.Linear(latent_dim + code, self.c0 * self.s0 * self.s0)
        dec: list[nn.Module] = []
        c = self.c0
        for i in range(n):
            last = i == n - 1
            out = channels if last else c // 2
            dec.append(nn.ConvTranspose2d(c, out, 4, 2, 1))
            if not last:
                dec.append(nn.ReLU(inplace=True))
            c = out
        self.decoder = nn.Sequential(*dec)

    def code(self, y: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            return self.embed(y)
        return F.one_hot(y, self.num_classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.encoder(x).flatten(1), self.code(y).to(x.dtype)], dim=1)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits."""
        h = F.relu(self.fc(torch.cat([z, self.code(y).to(z.dtype)], dim=1)))
        return self.decoder(h.view(-1, self.c0, self.s0, self.s0))


class ConditionalVAE(Generator):
    """Class-conditional convolutional VAE; see the module docstring."""

    class Options(Options):
        """Defaults follow Wyllie et al. (latent size 20) and suit 28 px MNIST-like data on a CPU."""

        latent_dim: int = Field(20, ge=1)
        width: int = Field(32, ge=1, description="channels of the encoder's first conv (doubling per stage)")
        conditioning: Literal["onehot", "embedding"] = "onehot"
        embed_dim: int = Field(16, ge=1, description="size of the class embedding (conditioning: embedding)")
        reconstruction: Literal["bce", "mse"] = "bce"
        beta: float = Field(1.0, ge=0.0, description="weight of the KL term (1 = ELBO)")
        epochs: int = Field(20, ge=1)
        batch_size: int = Field(64, ge=1)
        lr: float = Field(1e-3, gt=0)
        temperature: float = Field(1.0, gt=0.0, description="standard deviation of z at sampling")
        channels_last: bool = True

    options: ConditionalVAE.Options

    def __init__(self, options: ConditionalVAE.Options, **context: Any):
        super().__init__(options, **context)  # num_classes, channels, image_size, class_names, runtime
        num_classes, channels, image_size, runtime = self.num_classes, self.channels, self.image_size, self.runtime
        o = options
        self.device = torch.device(runtime.device)
        self.model = _CVAE(
            channels=channels, image_size=image_size, num_classes=num_classes, width=o.width,
            latent_dim=o.latent_dim, conditioning=o.conditioning, embed_dim=o.embed_dim,
        ).to(self.device)
        if o.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over the batch of the per-image reconstruction term and KL divergence (float32)."""
        with self.runtime.autocast():
            mu, logvar = self.model.encode(x, y)
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        with self.runtime.autocast():
            logits = self.model.decode(z, y)
        logits = logits.float()
        b = x.shape[0]
        if self.options.reconstruction == "bce":
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / b
        else:
            recon = F.mse_loss(torch.sigmoid(logits), x, reduction="sum") / b
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum() / b
        return recon, kl

    def fit(self, data: ImageSet) -> Mapping[str, Any]:
        o = self.options
        n = self.check_data(data, "vae")
        bs = min(o.batch_size, n)
        steps_per_epoch = math.ceil(n / bs)
        images, labels = data.images, data.labels
        model = self.model
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=o.lr)
        scaler = self.runtime.grad_scaler()  # pass-through unless fp16
        step = seen = 0
        ep_recon = ep_kl = float("nan")
        first = float("nan")
        curves = Curves(("loss", "recon", "kl"), o.epochs * steps_per_epoch, self.device)
        t0 = time.perf_counter()
        with self.runtime.reporter.task("vae: train", total=o.epochs * steps_per_epoch) as task:
            for epoch in range(o.epochs):
                perm = torch.randperm(n)
                sum_recon = sum_kl = 0.0
                for i in range(steps_per_epoch):
                    idx = perm[i * bs : (i + 1) * bs]
                    x = self._to_input(images[idx])
                    y = labels[idx].to(self.device)
                    recon, kl = self.losses(x, y)
                    loss = recon + o.beta * kl
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    step += 1
                    seen += len(idx)
                    sum_recon += recon.item() * len(idx)
                    sum_kl += kl.item() * len(idx)
                    curves.add(loss, recon, kl)
                    task.advance(1)
                ep_recon, ep_kl = sum_recon / n, sum_kl / n
                if epoch == 0:
                    first = ep_recon + o.beta * ep_kl
        model.eval()
        seconds = time.perf_counter() - t0
        pixels = self.channels * self.image_size**2
        return {
            "loss": ep_recon + o.beta * ep_kl,
            "loss_first_epoch": first,
            "recon": ep_recon,
            "recon_per_pixel": ep_recon / pixels,
            "kl": ep_kl,
            "steps": float(step),
            "images_seen": float(seen),
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else float("nan"),
            "history": curves.history(),
        }

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        model = self.model
        model.eval()
        labels = self.check_labels(labels)
        out = torch.empty(len(labels), self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        for start in range(0, len(labels), _SAMPLE_BATCH):
            y = labels[start : start + _SAMPLE_BATCH].to(self.device)
            z = torch.randn(len(y), self.options.latent_dim, device=self.device) * self.options.temperature
            with self.runtime.autocast():
                logits = model.decode(z, y)
            out[start : start + len(y)] = torch.sigmoid(logits.float()).mul_(255.0).round_().to(torch.uint8).cpu()
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        sub = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        if not sub:
            raise KeyError("state has no model.* entries")
        self.model.load_state_dict(sub)
        self.model.eval()
