"""Stable Diffusion 1.5 (Rombach et al. 2022) fine-tuned with a fresh LoRA every generation (Zhang et al. §5).

Every generation starts from the same frozen base model and attaches a *new* LoRA (Hu et al. 2022; peft
``LoraConfig`` on the UNet's attention projections, Gaussian ``A``, zero ``B``, so training starts from the base
model), trains it on the current training set with the prompt ``prompt_template.format(class_name=...)``, then
samples each requested class with that prompt.

- **Weights** come from disk only: ``model`` is a local directory in diffusers layout (``model_index.json``,
  ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a hub id looked up in the local
  Hugging Face cache (``local_files_only``; nothing is downloaded). Missing weights raise
  :class:`harness.errors.WeightsError` saying how to get them. The base model is recorded in the generator's
  training stats by path and a sha256 over the files that were loaded (``base_model``, ``base_model_sha256``).
- **Training** (as diffusers' ``train_text_to_image_lora.py``): images ``[-1, 1]`` (grey repeated to RGB),
  resized to ``resolution`` (bilinear), encoded by the frozen VAE (a sample of the posterior, times the VAE's
  ``scaling_factor``), noised by the model's own noise schedule at a uniform timestep; the UNet (with the LoRA)
  predicts the scheduler's target (ε or v) given the frozen CLIP text embedding of the class prompt; MSE; AdamW
  on the LoRA weights only (kept in float32), gradient clipping.
- **Sampling**: ``sample_steps`` steps of the model's own scheduler (PNDM for SD 1.5; or ``ddim``,
  ``dpm-solver++``, ``euler``) with classifier-free guidance ``guidance_scale`` against ``negative_prompt``
  (empty = the unconditional embedding SD was trained with), VAE decode, then resized to the dataset's size
  (antialiased bilinear or area) and, for 1-channel data, converted to grey (ITU-R BT.601 luma).
- **Memory** (one GPU): base weights in fp16/bf16 on CUDA (``weights_dtype: auto`` follows the run's precision;
  fp32 on CPU), the VAE optionally in fp32, optional attention slicing and gradient checkpointing.

``state_dict()`` holds only the LoRA tensors (``unet.<peft key>``); ``load_state_dict`` re-attaches them to a fresh
instance, which loads the same base model.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch.nn import functional as F

from harness.engine.rundir import file_sha256
from harness.errors import ConfigError, WeightsError
from harness.interfaces import Generator, Options
from harness.imageset import from_unit_float

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
_LUMA = (0.299, 0.587, 0.114)


def _missing(model: str, why: str) -> WeightsError:
    return WeightsError(
        f"Stable Diffusion weights {model!r} {why}; download them with "
        f"`huggingface-cli download {DEFAULT_MODEL}` or point `--set generator.options.model=/path/to/sd15` at a "
        "local copy in diffusers layout."
    )


def resolve_model(model: str, revision: str | None = None) -> Path:
    """A local diffusers directory for ``model`` (a path, or a hub id found in the local HF cache), else
    :class:`WeightsError`. Never opens a network connection."""
    path = Path(os.path.expanduser(model))
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, revision=revision, local_files_only=True))
        except Exception:  # not in the cache, or not a valid repo id: either way, not on this machine
            raise _missing(model, "are neither a local directory nor in the Hugging Face cache") from None
    if not (path / "model_index.json").is_file() or not all((path / c).is_dir() for c in _COMPONENTS):
        raise _missing(model, f"at {str(path)!r} are not a complete diffusers directory ({', '.join(_COMPONENTS)})")
    return path


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Library code never prints: silence transformers'/diffusers' loading bars, then restore their setting."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    restore = [m.enable_progress_bar for m in (tlog, dlog) if m.is_progress_bar_enabled()]
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        for enable in restore:
            enable()


def _weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The weight files diffusers/transformers load from ``folder``: safetensors before bin, the variant's."""
    files = [f for f in folder.iterdir() if f.is_file()]
    for ext in (".safetensors", ".bin"):
        for stem in _WEIGHT_STEMS:
            base = f"{stem}.{variant}" if variant else stem
            shard = re.compile(re.escape(base) + r"-\d{5}-of-\d{5}" + re.escape(ext))
            hit = [f for f in files if f.name == base + ext or shard.fullmatch(f.name)]
            if hit:
                return sorted(hit)
    return []


def base_model_sha256(root: Path, variant: str | None) -> str:
    """sha256 over ``"<relative path> <file sha256>"`` lines of every file loaded: configs, tokenizer, weights."""
    files = [root / "model_index.json"]
    for component in _COMPONENTS:
        folder = root / component
        files += sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in (".json", ".txt"))
        files += _weight_files(folder, variant)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()} {file_sha256(f)}\n".encode())
    return h.hexdigest()


class SD15LoRA(Generator):
    """Stable Diffusion 1.5 with a fresh LoRA per generation; see the module docstring."""

    class Options(Options):
        """Defaults: SD 1.5's own sampling defaults (PNDM, 50 steps, guidance 7.5) and common LoRA settings."""

        model: str = Field(DEFAULT_MODEL, description="local diffusers directory, or hub id in the local HF cache")
        revision: str | None = Field(None, description="hub revision (with a hub id)")
        variant: str | None = Field(None, description="weights variant to load, e.g. fp16")
        prompt_template: str = Field("a photo of a {class_name}", description="{class_name} is filled in")
        rank: int = Field(8, ge=1)
        alpha: float | None = Field(None, gt=0, description="LoRA alpha; null = rank (scale 1)")
        target_modules: tuple[str, ...] = Field(("to_q", "to_k", "to_v", "to_out.0"), min_length=1)
        lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
        steps: int = Field(1000, ge=1, description="optimizer steps per generation")
        batch_size: int = Field(4, ge=1)
        lr: float = Field(1e-4, gt=0)
        weight_decay: float = Field(1e-2, ge=0)
        max_grad_norm: float = Field(1.0, gt=0)
        resolution: int = Field(512, ge=8, description="side at which the model is trained and sampled")
        sampler: Literal["model", "ddim", "pndm", "dpm-solver++", "euler"] = Field(
            "model", description="model = the scheduler shipped with the weights (PNDM for SD 1.5)"
        )
        sample_steps: int = Field(50, ge=1)
        guidance_scale: float = Field(7.5, ge=0.0, description="classifier-free guidance; 1 = none")
        negative_prompt: str = ""
        sample_batch_size: int = Field(8, ge=1)
        resize: Literal["bilinear", "area"] = Field("bilinear", description="down to the dataset's size (antialiased)")
        weights_dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
            "auto", description="auto: the run's precision on CUDA (fp16/bf16), fp32 on CPU"
        )
        vae_fp32: bool = Field(True, description="keep the VAE in fp32")
        attention_slicing: bool = False
        gradient_checkpointing: bool = False

        @field_validator("prompt_template")
        @classmethod
        def _template(cls, value: str) -> str:
            try:
                value.format(class_name="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"prompt_template may only use the field {{class_name}}: {exc}") from None
            return value

    options: SD15LoRA.Options

    @classmethod
    def preflight(cls, options) -> None:
        resolve_model(options.model, options.revision)  # WeightsError at run start, not after generation 0

    def __init__(self, options: SD15LoRA.Options, **context: Any):
        super().__init__(options, **context)  # num_classes, channels, image_size, class_names, runtime
        channels, runtime = self.channels, self.runtime
        if channels not in (1, 3):
            raise ConfigError(f"sd15-lora makes RGB images; it supports 1- or 3-channel datasets, not {channels}")
        o = options
        self.device = torch.device(runtime.device)
        self.root = resolve_model(o.model, o.revision)
        self.dtype = self._weights_dtype()
        self._load()
        self._attach_lora()

    # ------------------------------------------------------------------ building

    def _weights_dtype(self) -> torch.dtype:
        choice = self.options.weights_dtype
        if choice == "auto":
            if self.device.type != "cuda":
                return torch.float32
            return self.runtime.autocast_dtype or torch.float32
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]

    def _load(self) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        o, root = self.options, self.root
        kw: dict[str, Any] = dict(local_files_only=True, variant=o.variant)
        vae_dtype = torch.float32 if o.vae_fp32 else self.dtype
        try:
            with _no_progress_bars():
                self.tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
                self.text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", dtype=self.dtype, **kw)
                self.vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=vae_dtype, **kw)
                self.unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=self.dtype, **kw)
                self.scheduler_config = dict(
                    DDPMScheduler.load_config(root, subfolder="scheduler", local_files_only=True)
                )
        except (OSError, ValueError, KeyError) as exc:
            raise _missing(o.model, f"at {str(root)!r} could not be loaded ({type(exc).__name__}: {exc})") from exc
        for m in (self.text_encoder, self.vae, self.unet):
            m.requires_grad_(False)
            m.eval()
            m.to(self.device)
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if o.resolution % (vae_factor * unet_factor):
            raise ConfigError(
                f"sd15-lora resolution must be a multiple of {vae_factor * unet_factor} for this model "
                f"(VAE ×{vae_factor}, UNet ×{unet_factor}), got {o.resolution}"
            )
        self.latent_size = o.resolution // vae_factor
        if o.attention_slicing:
            self.unet.set_attention_slice("auto")

    def _attach_lora(self) -> None:
        from peft import LoraConfig

        o = self.options
        config = LoraConfig(
            r=o.rank,
            lora_alpha=o.alpha if o.alpha is not None else o.rank,
            init_lora_weights="gaussian",
            target_modules=list(o.target_modules),
            lora_dropout=o.lora_dropout,
        )
        try:
            self.unet.add_adapter(config)
        except ValueError as exc:
            raise ConfigError(f"sd15-lora target_modules {list(o.target_modules)} do not fit the UNet: {exc}") from None
        self.lora_params = [p for p in self.unet.parameters() if p.requires_grad]
        for p in self.lora_params:  # train the adapter in float32 even when the base is fp16/bf16
            p.data = p.data.float()

    # ------------------------------------------------------------------ helpers

    @torch.no_grad()
    def _embed(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)

    def prompts(self) -> list[str]:
        return [self.options.prompt_template.format(class_name=name) for name in self.class_names]

    def _to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``N×C×H×W`` → RGB ``[-1, 1]`` at ``resolution``, in the VAE's dtype."""
        x = images.to(self.device).float().div_(127.5).sub_(1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        r = self.options.resolution
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        return x.to(self.vae.dtype)

    def _to_dataset(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded RGB ``[-1, 1]`` → uint8 with the dataset's channels and size."""
        x = x.float()
        s = self.image_size
        if x.shape[-1] != s or x.shape[-2] != s:
            if self.options.resize == "area":
                x = F.interpolate(x, size=(s, s), mode="area")
            else:
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        if self.channels == 1:
            luma = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
            x = (x * luma).sum(1, keepdim=True)
        return from_unit_float(x).cpu()

    def _sampling_scheduler(self):
        from diffusers import (
            DDIMScheduler,
            DDPMScheduler,
            DPMSolverMultistepScheduler,
            EulerDiscreteScheduler,
            PNDMScheduler,
        )

        name = self.options.sampler
        if name == "model":
            import diffusers

            cls = getattr(diffusers, self.scheduler_config.get("_class_name", "PNDMScheduler"), DDPMScheduler)
        else:
            cls = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "dpm-solver++": DPMSolverMultistepScheduler,
                   "euler": EulerDiscreteScheduler}[name]
        return cls.from_config(self.scheduler_config)

    # ------------------------------------------------------------------ training

    def fit(self, data) -> Mapping[str, Any]:
        from diffusers import DDPMScheduler

        o = self.options
        n = self.check_data(data, "sd15-lora")
        noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        T = noise_scheduler.config.num_train_timesteps
        prediction = noise_scheduler.config.prediction_type
        scaling = self.vae.config.scaling_factor
        embeds = self._embed(self.prompts())
        unet = self.unet
        if o.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        opt = torch.optim.AdamW(self.lora_params, lr=o.lr, weight_decay=o.weight_decay)
        fp16 = self.device.type == "cuda" and torch.float16 in (self.dtype, self.runtime.autocast_dtype)
        scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        bs = min(o.batch_size, n)
        images, labels = data.images, data.labels
        perm, cursor = torch.randperm(n), 0
        first = last = float("nan")
        total = 0.0
        seen = 0
        t0 = time.perf_counter()
        with self.runtime.reporter.task("sd15-lora: train", total=o.steps) as task:
            for step in range(o.steps):
                if cursor + bs > n:  # a fresh permutation per pass over the data
                    perm, cursor = torch.randperm(n), 0
                idx = perm[cursor : cursor + bs]
                cursor += bs
                with torch.no_grad():
                    latents = self.vae.encode(self._to_model_input(images[idx])).latent_dist.sample()
                    latents = (latents * scaling).to(self.dtype)
                noise = torch.randn_like(latents)
                t = torch.randint(0, T, (len(idx),), device=self.device)
                noisy = noise_scheduler.add_noise(latents, noise, t)
                target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(latents, noise, t)
                cond = embeds[labels[idx].to(self.device)]
                with self.runtime.autocast():
                    pred = unet(noisy, t, encoder_hidden_states=cond).sample
                loss = F.mse_loss(pred.float(), target.float())
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self.lora_params, o.max_grad_norm)
                scaler.step(opt)
                scaler.update()
                value = loss.item()
                first = value if step == 0 else first
                last = value
                total += value
                seen += len(idx)
                task.advance(1)
        if o.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        unet.eval()
        seconds = time.perf_counter() - t0
        return {
            "loss": last,
            "loss_first": first,
            "loss_mean": total / o.steps,
            "steps": float(o.steps),
            "images_seen": float(seen),
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else float("nan"),
            "lora_parameters": float(sum(p.numel() for p in self.lora_params)),
            "base_model": str(self.root),
            "base_model_sha256": base_model_sha256(self.root, self.options.variant),
        }

    # ------------------------------------------------------------------ sampling and state

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        o = self.options
        labels = self.check_labels(labels)
        unet, vae = self.unet, self.vae
        unet.eval()
        embeds = self._embed(self.prompts())
        guided = o.guidance_scale != 1.0
        uncond = self._embed([o.negative_prompt]) if guided else None
        latent_channels = unet.config.in_channels
        n = len(labels)
        out = torch.empty(n, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        batches = math.ceil(n / o.sample_batch_size)
        with self.runtime.reporter.task("sd15-lora: sample", total=batches * o.sample_steps) as task:
            for start in range(0, n, o.sample_batch_size):
                y = labels[start : start + o.sample_batch_size].to(self.device)
                b = len(y)
                scheduler = self._sampling_scheduler()  # multistep schedulers keep state: a fresh one per batch
                scheduler.set_timesteps(o.sample_steps, device=self.device)
                shape = (b, latent_channels, self.latent_size, self.latent_size)
                latents = torch.randn(shape, device=self.device, dtype=torch.float32) * scheduler.init_noise_sigma
                cond = embeds[y]
                context = torch.cat([cond, uncond.expand(b, -1, -1)]) if guided else cond
                for t in scheduler.timesteps:
                    inp = torch.cat([latents, latents]) if guided else latents
                    inp = scheduler.scale_model_input(inp, t).to(self.dtype)
                    with self.runtime.autocast():
                        eps = unet(inp, t, encoder_hidden_states=context).sample.float()
                    if guided:
                        e_cond, e_uncond = eps.chunk(2)
                        eps = e_uncond + o.guidance_scale * (e_cond - e_uncond)
                    latents = scheduler.step(eps, t, latents).prev_sample
                    task.advance(1)
                decoded = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
                out[start : start + b] = self._to_dataset(decoded)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        lora = get_peft_model_state_dict(self.unet)
        return {f"unet.{k}": v.detach().float().cpu().contiguous() for k, v in lora.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        sub = {k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}
        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(self.unet).items()}
        given = {k: tuple(v.shape) for k, v in sub.items()}
        if given != expected:
            missing, extra = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
            shapes = sorted(k for k in expected.keys() & given.keys() if expected[k] != given[k])
            raise KeyError(
                f"LoRA state does not fit this adapter (rank or target_modules changed?): {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}), {len(shapes)} of another shape "
                f"(e.g. {shapes[:2]})"
            )
        set_peft_model_state_dict(self.unet, {k: v.to(self.device) for k, v in sub.items()})
        self.unet.eval()
