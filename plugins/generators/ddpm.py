"""Class-conditional diffusion model (DDPM, Ho et al. 2020) trained from scratch on small images.

- **Network**: diffusers ``UNet2DModel``. ``len(block_out_channels)`` resolution levels, each with
  ``layers_per_block`` ResNet blocks, ×2 downsampling between levels (``image_size`` must be divisible by
  ``2^(levels-1)``: 28 px with three levels runs at 28 → 14 → 7). With ``attention: true`` the deepest level
  (down and up) and the middle block carry self-attention, as in DDPM's 16×16 attention on 32 px images.
  The class enters through ``num_class_embeds = num_classes + 1`` learned embeddings added to the timestep
  embedding; index ``num_classes`` is the *null* class used for classifier-free guidance.
- **Training**: ``DDPMScheduler`` forward process (``train_timesteps``, ``beta_schedule``), ε-prediction, MSE,
  AdamW, gradient clipping at 1, optional exponential moving average of the weights (used for sampling).
  With ``cond_drop_prob > 0`` each label is replaced by the null class with that probability (Ho & Salimans
  2022), so the same network also learns the unconditional model.
- **Sampling**: deterministic DDIM (η = 0) with ``sample_steps`` steps, by default ``timestep_spacing =
  "trailing"`` so the first step starts from pure noise at ``t = T − 1`` (Lin et al. 2024; diffusers' default
  ``leading`` starts at ``T − T/steps``, which does not match pure noise when steps are few), predicted ``x_0``
  clipped to ``[-1, 1]``. ``guidance_scale = s`` mixes ``ε = ε_∅ + s (ε_y − ε_∅)``; ``s = 1`` (the
  default) is the plain conditional model and skips the unconditional pass.

Training keeps the data as uint8 and converts each batch to ``[-1, 1]`` on the fly; one ``torch.randperm`` per
epoch, no DataLoader. Autocast follows ``runtime.precision`` and the network runs channels_last.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch.nn import functional as F

from harness.engine.training import Curves
from harness.errors import ConfigError
from harness.interfaces import Generator, Options
from harness.imageset import ImageSet, from_unit_float


def _build_unet(o: DDPM.Options, *, channels: int, image_size: int, num_classes: int):
    from diffusers import UNet2DModel

    levels = len(o.block_out_channels)
    deepest = o.block_out_channels[-1]
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if o.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(o.block_out_channels),
        layers_per_block=o.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        add_attention=o.attention,
        attention_head_dim=8 if deepest % 8 == 0 else deepest,
        norm_num_groups=o.norm_num_groups,
        dropout=o.dropout,
        num_class_embeds=num_classes + 1,  # + the null class of classifier-free guidance
    )


class DDPM(Generator):
    """Class-conditional DDPM with a diffusers UNet, DDIM sampling and optional classifier-free guidance."""

    class Options(Options):
        """Defaults suit 28–32 px data (docs/generators.md); ``block_out_channels=(32, 64, 64)`` is a CPU size."""

        block_out_channels: tuple[int, ...] = Field(
            (64, 128, 128), min_length=1, description="channels per resolution level (×2 downsampling between)"
        )
        layers_per_block: int = Field(2, ge=1)
        norm_num_groups: int = Field(16, ge=1, description="GroupNorm groups; must divide every channel count")
        attention: bool = Field(True, description="self-attention at the deepest level and in the middle block")
        dropout: float = Field(0.1, ge=0.0, lt=1.0)
        epochs: int = Field(40, ge=1)
        batch_size: int = Field(128, ge=1)
        lr: float = Field(2e-4, gt=0)
        weight_decay: float = Field(0.0, ge=0)
        max_grad_norm: float = Field(1.0, gt=0)
        train_timesteps: int = Field(1000, ge=2)
        beta_schedule: Literal["linear", "squaredcos_cap_v2"] = Field(
            "squaredcos_cap_v2", description="linear (Ho et al.) or cosine (Nichol & Dhariwal)"
        )
        sample_steps: int = Field(50, ge=1, description="DDIM steps")
        timestep_spacing: Literal["trailing", "leading", "linspace"] = Field(
            "trailing", description="which DDIM timesteps; trailing starts at t = T − 1 (Lin et al. 2024)"
        )
        guidance_scale: float = Field(1.0, ge=0.0, description="1 = no guidance; needs cond_drop_prob > 0 otherwise")
        cond_drop_prob: float | None = Field(
            None, ge=0.0, lt=1.0, description="label dropout; null = 0.1 when guidance_scale ≠ 1, else 0"
        )
        ema: bool = True
        ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
        sample_batch_size: int = Field(256, ge=1)
        channels_last: bool = True

        @model_validator(mode="after")
        def _check(self) -> DDPM.Options:
            bad = [c for c in self.block_out_channels if c < 1 or c % self.norm_num_groups]
            if bad:
                raise ValueError(
                    f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels entry, not {bad}"
                )
            if self.sample_steps > self.train_timesteps:
                raise ValueError(f"sample_steps ({self.sample_steps}) exceeds train_timesteps ({self.train_timesteps})")
            if self.guidance_scale != 1.0 and self.cond_drop_prob == 0.0:
                raise ValueError("guidance_scale ≠ 1 needs an unconditional model: set cond_drop_prob > 0")
            return self

        @property
        def drop_prob(self) -> float:
            if self.cond_drop_prob is not None:
                return self.cond_drop_prob
            return 0.1 if self.guidance_scale != 1.0 else 0.0

    options: DDPM.Options

    def __init__(self, options: DDPM.Options, **context: Any):
        super().__init__(options, **context)  # num_classes, channels, image_size, class_names, runtime
        num_classes, channels, image_size, runtime = self.num_classes, self.channels, self.image_size, self.runtime
        o = options
        factor = 2 ** (len(o.block_out_channels) - 1)
        if image_size % factor:
            raise ConfigError(
                f"ddpm with {len(o.block_out_channels)} levels needs an image size divisible by {factor}, "
                f"got {image_size}; use fewer block_out_channels entries"
            )
        self.device = torch.device(runtime.device)
        kw = dict(channels=channels, image_size=image_size, num_classes=num_classes)
        self.unet = _build_unet(o, **kw).to(self.device)
        self.unet_ema = _build_unet(o, **kw).to(self.device) if o.ema else None
        if self.unet_ema is not None:
            self.unet_ema.load_state_dict(self.unet.state_dict())
            self.unet_ema.requires_grad_(False)
        if o.channels_last:
            for m in (self.unet, self.unet_ema):
                if m is not None:
                    m.to(memory_format=torch.channels_last)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _schedule_kwargs(self) -> dict:
        return dict(num_train_timesteps=self.options.train_timesteps, beta_schedule=self.options.beta_schedule)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    # ------------------------------------------------------------------ training

    def fit(self, data: ImageSet) -> Mapping[str, Any]:
        from diffusers import DDPMScheduler

        o = self.options
        n = self.check_data(data, "ddpm")
        scheduler = DDPMScheduler(**self._schedule_kwargs(), prediction_type="epsilon")
        bs = min(o.batch_size, n)
        steps_per_epoch = math.ceil(n / bs)
        drop = o.drop_prob
        images, labels = data.images, data.labels
        unet = self.unet
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        scaler = self.runtime.grad_scaler()  # pass-through unless fp16
        ema_params = list(self.unet_ema.parameters()) if self.unet_ema is not None else []

        total = 0.0
        step = seen = 0
        first = last = float("nan")
        curves = Curves(("loss",), o.epochs * steps_per_epoch, self.device)
        t0 = time.perf_counter()
        with self.runtime.reporter.task("ddpm: train", total=o.epochs * steps_per_epoch) as task:
            for epoch in range(o.epochs):
                perm = torch.randperm(n)
                epoch_loss = 0.0
                for i in range(steps_per_epoch):
                    idx = perm[i * bs : (i + 1) * bs]
                    b = len(idx)
                    x0 = self._layout(images[idx].to(self.device).float().div_(127.5).sub_(1.0))
                    y = labels[idx].to(self.device)
                    if drop > 0:
                        y = torch.where(torch.rand(b, device=self.device) < drop, self.null_class, y)
                    noise = torch.randn_like(x0)
                    t = torch.randint(0, o.train_timesteps, (b,), device=self.device)
                    xt = scheduler.add_noise(x0, noise, t)
                    with self.runtime.autocast():
                        pred = unet(xt, t, class_labels=y).sample
                    loss = F.mse_loss(pred.float(), noise)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)  # clip the true gradients
                    torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm)
                    scaler.step(opt)
                    scaler.update()
                    step += 1
                    if ema_params:
                        # warm-up so short runs are not dominated by the random initialisation (as in dcgan)
                        decay = min(o.ema_decay, (1.0 + step) / (10.0 + step))
                        with torch.no_grad():
                            torch._foreach_lerp_(ema_params, [p.detach() for p in unet.parameters()], 1.0 - decay)
                    epoch_loss += loss.item() * b
                    curves.add(loss)
                    seen += b
                    task.advance(1)
                last = epoch_loss / n
                first = last if epoch == 0 else first
                total += epoch_loss
        unet.eval()
        seconds = time.perf_counter() - t0
        return {
            "loss": last,
            "loss_first_epoch": first,
            "loss_mean": total / max(seen, 1),
            "steps": float(step),
            "images_seen": float(seen),
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else float("nan"),
            "parameters": float(sum(p.numel() for p in unet.parameters())),
            "cond_drop_prob": drop,
            "history": curves.history(),
        }

    # ------------------------------------------------------------------ sampling and state

    @property
    def _sampler(self):
        return self.unet_ema if self.unet_ema is not None else self.unet

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        from diffusers import DDIMScheduler

        o = self.options
        unet = self._sampler
        unet.eval()
        labels = self.check_labels(labels)
        scheduler = DDIMScheduler(
            **self._schedule_kwargs(), prediction_type="epsilon", clip_sample=True, set_alpha_to_one=True,
            timestep_spacing=o.timestep_spacing,
        )
        scheduler.set_timesteps(o.sample_steps, device=self.device)
        guided = o.guidance_scale != 1.0
        n = len(labels)
        out = torch.empty(n, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        batches = math.ceil(n / o.sample_batch_size)
        with self.runtime.reporter.task("ddpm: sample", total=batches * len(scheduler.timesteps)) as task:
            for start in range(0, n, o.sample_batch_size):
                y = labels[start : start + o.sample_batch_size].to(self.device)
                b = len(y)
                x = torch.randn(b, self.channels, self.image_size, self.image_size, device=self.device)
                if guided:
                    y = torch.cat([y, torch.full_like(y, self.null_class)])
                for t in scheduler.timesteps:
                    inp = self._layout(torch.cat([x, x]) if guided else x)
                    with self.runtime.autocast():
                        eps = unet(inp, t, class_labels=y).sample.float()
                    if guided:
                        cond, uncond = eps.chunk(2)
                        eps = uncond + o.guidance_scale * (cond - uncond)
                    x = scheduler.step(eps, t, x, eta=0.0).prev_sample
                    task.advance(1)
                out[start : start + b] = from_unit_float(x).cpu()
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for prefix, module in (("unet.", self.unet), ("unet_ema.", self.unet_ema)):
            if module is not None:
                state.update({prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for prefix, module in (("unet.", self.unet), ("unet_ema.", self.unet_ema)):
            if module is None:
                continue
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not sub:
                raise KeyError(f"state has no {prefix}* entries")
            module.load_state_dict(sub)
            module.eval()
