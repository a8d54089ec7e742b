"""``clip``: keep the candidates that an open_clip model finds most like their class (Zhang et al., App. C).

Each candidate is scored against the prompt of the class it was generated for (``prompt_template``, default
``"a photo of a {name}"``, filled with the dataset's class name)::

    score = 100 · cos(E_image(x), E_text(prompt(y)))

the CLIPScore of Hessel et al. (2021) with torchmetrics' scale, **without** clamping negatives to 0 (a clamp
would tie every negative candidate and make the ranking among them arbitrary).

Images (uint8 ``N×C×H×W``) are preprocessed like CLIP's own transform on square inputs: one channel repeated to
three, bicubic resize with antialiasing to the model's image size, ``[0, 1]``, then the model's mean/std (CLIP's
unless the pretrained tag says otherwise). Batches run on ``runtime.device`` under the run's autocast precision;
the cosine is computed in float32.

Selection:

- ``binning: false`` (default): the harness keeps the top ``keep`` fraction of each class by score.
- ``binning: true`` — the paper's procedure: the CLIP-score range of all candidates of the generation is cut into
  ``bins`` (10) equal-width bins; each class then keeps **whole bins**, from the top down, until it holds at
  least ``floor(keep·n_c + 0.5)`` candidates (the harness's per-class count), so a bin is never split by an
  arbitrary tie-break and a class never keeps less than the ``keep`` fraction. The scores recorded are the raw
  CLIP scores.

Weights are **never downloaded**: ``pretrained`` (an open_clip tag) is looked up in the local cache only, and a
missing file is a :class:`~harness.errors.WeightsError` that says how to get it. ``checkpoint`` names a local
file instead. ``pretrained: null`` gives **randomly initialised weights — meaningless scores, for tests only** —
and ``model_cfg`` a custom (e.g. tiny) architecture, also for tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field, field_validator, model_validator

from harness.engine.selection import keep_quota
from harness.errors import ConfigError, WeightsError
from harness.imageset import ImageSet
from harness.interfaces import Filter, FilterContext, Options

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: open_clip's default file names inside a Hugging Face Hub repository (safetensors preferred).
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: CLIP's normalisation (used when neither the tag nor the model says otherwise).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipOptions(Options):
    """:ivar model: open_clip architecture name (``open_clip.list_models()``).
    :ivar pretrained: open_clip pretrained tag, resolved from the local cache only; ``null``: random weights
        (clearly labelled: for tests only, the scores mean nothing).
    :ivar checkpoint: a local weights file (``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``);
        when ``pretrained`` is also a known tag, the tag still gives the preprocessing and activation.
    :ivar cache_dir: where to look for cached weights; default Hugging Face's cache (``$HF_HUB_CACHE``), and
        ``~/.cache/clip`` for URL-only tags.
    :ivar model_cfg: a custom open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) used instead
        of ``model``; for tests (a tiny model), with ``pretrained: null`` or a ``checkpoint``.
    :ivar prompt_template: the text of a class; ``{name}`` is replaced by the class name.
    :ivar batch_size: images per forward pass.
    :ivar binning: the paper's selection: keep whole top score bins per class (see the module docs).
    :ivar bins: the number of equal-width bins over the score range.
    """

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    checkpoint: str | None = None
    cache_dir: str | None = None
    model_cfg: dict[str, Any] | None = None
    prompt_template: str = "a photo of a {name}"
    batch_size: int = Field(default=256, ge=1, le=65536)
    binning: bool = False
    bins: int = Field(default=10, ge=1, le=1000)

    @field_validator("prompt_template")
    @classmethod
    def _has_name(cls, v: str) -> str:
        if "{name}" not in v:
            raise ValueError("prompt_template must contain {name}, e.g. 'a photo of a {name}'")
        try:
            v.format(name="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt_template may only use the placeholder {{name}} ({exc})") from None
        return v

    @field_validator("model_cfg")
    @classmethod
    def _is_model_config(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and not all(k in v for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError("model_cfg must be an open_clip model config with embed_dim, vision_cfg and text_cfg")
        return v

    @model_validator(mode="after")
    def _custom_needs_weights_choice(self) -> ClipOptions:
        if self.model_cfg is not None and self.pretrained is not None and self.checkpoint is None:
            raise ValueError(
                "a custom model_cfg has no pretrained tags: set pretrained: null (random weights, for tests) "
                "or give a checkpoint file"
            )
        return self


def bin_index(scores: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bins over ``[min, max]`` of ``scores``: ``0`` (lowest) … ``bins − 1`` (the top bin holds max).

    All scores equal: everything is in the top bin.
    """
    s = scores.double()
    if s.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    lo, hi = s.min(), s.max()
    if not bool(hi > lo):
        return torch.full((s.numel(),), bins - 1, dtype=torch.int64)
    return torch.floor((s - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)


def keep_top_bins_per_class(scores: torch.Tensor, labels: torch.Tensor, keep: float, bins: int) -> torch.Tensor:
    """Bool mask: per class, whole bins from the top down until at least the class's :func:`keep_quota` is kept."""
    b = bin_index(scores, bins)
    labels = labels.to(torch.int64).cpu()
    quota = keep_quota(torch.bincount(labels), keep)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        in_c = labels == c
        k_c = int(quota[c])
        counts = torch.bincount(b[in_c], minlength=bins)
        from_top = torch.cumsum(counts.flip(0), 0)  # from_top[j]: candidates in the top j+1 bins
        j = int(torch.nonzero(from_top >= k_c)[0])
        mask |= in_c & (b >= bins - 1 - j)
    return mask


class ClipFilter(Filter):
    """Scores candidates by the CLIP similarity to their class prompt (open_clip; local weights only)."""

    Options = ClipOptions
    options: ClipOptions

    # ------------------------------------------------------------------ weights

    def _open_clip(self) -> Any:
        try:
            import open_clip
        except ImportError:
            raise ConfigError(
                "the clip filter needs open_clip: pip install 'bench-bias-loops[clip]' (open_clip_torch)"
            ) from None
        return open_clip

    def _arch(self, open_clip: Any) -> str:
        """The open_clip model name to build; a custom ``model_cfg`` is registered under a content-hash name."""
        cfg = self.options.model_cfg
        if cfg is None:
            if open_clip.get_model_config(self.options.model) is None:
                raise ConfigError(
                    f"clip filter: unknown open_clip model {self.options.model!r}; see open_clip.list_models()"
                )
            return self.options.model
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
        name = f"bench-custom-{digest}"
        open_clip.factory._MODEL_CONFIGS[name] = json.loads(json.dumps(cfg))  # a private registry; no file needed
        return name

    def describe(self) -> dict[str, Any]:
        o = self.options
        random = o.pretrained is None and o.checkpoint is None
        return {"model": o.model if o.model_cfg is None else "custom config", "pretrained": o.pretrained,
                "checkpoint": o.checkpoint, "binning": o.binning,
                "weights": "RANDOM (tests only; scores are not CLIP scores)" if random else "pretrained"}

    @classmethod
    def preflight(cls, options: Any) -> None:
        """Missing weights fail when the run starts, not at the first filter unit."""
        inst = cls(options)
        open_clip = inst._open_clip()
        inst.resolve_weights(open_clip, inst._arch(open_clip))

    def resolve_weights(self, open_clip: Any, arch: str) -> tuple[str | None, dict[str, Any]]:
        """``(local weights file or None for random init, the tag's pretrained config or {})``.

        :raises WeightsError: the tag's file is not in the local cache (with how to get it).
        """
        opts = self.options
        tag_cfg: dict[str, Any] = {}
        if opts.pretrained is not None and opts.model_cfg is None:
            tag_cfg = dict(open_clip.get_pretrained_cfg(arch, opts.pretrained) or {})
            if not tag_cfg and opts.checkpoint is None:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise ConfigError(
                    f"clip filter: {opts.pretrained!r} is not an open_clip tag of {arch!r}; choose from "
                    f"{', '.join(tags) or 'none (give a checkpoint file)'}, or set pretrained: null for random weights"
                )
        if opts.checkpoint is not None:
            path = Path(opts.checkpoint).expanduser()
            if not path.is_file():
                raise WeightsError(f"clip filter: the checkpoint file {path} does not exist")
            return str(path), tag_cfg
        if opts.pretrained is None:
            return None, {}
        found = find_cached(tag_cfg, opts.cache_dir)
        if found is None:
            raise WeightsError(missing_weights_message(arch, opts.pretrained, tag_cfg, opts.cache_dir))
        return found, tag_cfg

    def load_model(self, device: str) -> tuple[nn.Module, Any, tuple[float, ...], tuple[float, ...], int]:
        """``(model in eval mode on device, tokenizer, mean, std, image side)``."""
        open_clip = self._open_clip()
        arch = self._arch(open_clip)
        path, tag_cfg = self.resolve_weights(open_clip, arch)
        kwargs: dict[str, Any] = {"pretrained_image": False, "pretrained_text": False, "device": "cpu"}
        if path is not None:
            kwargs["pretrained"] = path
            kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
            model = open_clip.create_model(arch, **kwargs)
        else:
            # random weights (tests): a fixed init, whatever the harness's RNG state; open_clip's warning muted
            with torch.random.fork_rng(devices=[]), _quiet_logging():
                torch.manual_seed(0)
                model = open_clip.create_model(arch, **kwargs)
        model = model.to(device).eval()
        pre = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        mean = tuple(tag_cfg.get("mean") or pre.get("mean") or CLIP_MEAN)
        std = tuple(tag_cfg.get("std") or pre.get("std") or CLIP_STD)
        size = model.visual.image_size
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        tokenizer = open_clip.get_tokenizer(arch)
        return model, tokenizer, mean, std, side

    # ------------------------------------------------------------------ scores

    def prompts(self, class_names: tuple[str, ...]) -> list[str]:
        return [self.options.prompt_template.format(name=n) for n in class_names]

    def score(self, candidates: ImageSet, context: FilterContext) -> torch.Tensor:
        if len(candidates) == 0:
            return torch.zeros(0, dtype=torch.float32)
        labels = candidates.labels
        names = context.class_names
        if int(labels.min()) < 0 or int(labels.max()) >= len(names):
            raise ValueError(f"candidate labels must lie in [0, {len(names)}) to have a class name")
        runtime = context.runtime
        device = runtime.device
        model, tokenizer, mean, std, side = self.load_model(device)
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        bs = self.options.batch_size
        n = len(candidates)
        out = torch.empty(n, dtype=torch.float32)
        with torch.no_grad():
            with runtime.autocast():
                text = model.encode_text(tokenizer(self.prompts(names)).to(device))
            text = torch.nn.functional.normalize(text.float(), dim=-1)
            reporter = getattr(runtime, "reporter", None)
            task = reporter.task("clip", total=(n + bs - 1) // bs) if reporter else contextlib.nullcontext()
            with task as progress:
                for start in range(0, n, bs):
                    x = preprocess(candidates.images[start:start + bs].to(device), side, m, s)
                    with runtime.autocast():
                        emb = model.encode_image(x)
                    emb = torch.nn.functional.normalize(emb.float(), dim=-1)
                    y = labels[start:start + bs].to(device)
                    out[start:start + bs] = (100.0 * (emb * text[y]).sum(-1)).cpu()
                    if progress is not None:
                        progress.advance()
        return out

    def select(self, scores: torch.Tensor, labels: torch.Tensor, keep: float) -> torch.Tensor | None:
        if not self.options.binning:
            return None
        return keep_top_bins_per_class(scores, labels, keep, self.options.bins)


def preprocess(images: torch.Tensor, side: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``B×C×H×W`` → float32 ``B×3×side×side``, CLIP-normalised (1 channel repeated to 3)."""
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"the clip filter takes 1- or 3-channel images, got {x.shape[1]} channels")
    if x.shape[-2:] != (side, side):
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    return (x - mean) / std


def find_cached(tag_cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The tag's weights file if it is already on disk (Hugging Face cache, or the URL cache); never downloads."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - open_clip depends on it
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = os.path.split(hub)
            names = (filename,) if filename else HF_FILES
            if filename.endswith((".bin", ".pth")):
                names = (filename[:-4] + ".safetensors", filename)
            for name in names:
                hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
    url = tag_cfg.get("url", "")
    if url:
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def missing_weights_message(arch: str, tag: str, tag_cfg: dict[str, Any], cache_dir: str | None) -> str:
    """One sentence: which weights are missing, and how to get them."""
    hub = tag_cfg.get("hf_hub", "")
    where = f" under {cache_dir}" if cache_dir else ""
    if hub:
        repo, filename = os.path.split(hub)
        get = f"`hf download {repo} {filename or HF_FILES[0]}" + (
            f" --cache-dir {cache_dir}`" if cache_dir else "`"
        )
    else:
        get = f"download {tag_cfg.get('url', '?')} into {cache_dir or '~/.cache/clip'}"
    return (
        f"clip filter: the open_clip weights {arch}/{tag} are not in the local cache{where} and are never downloaded "
        f"at run time; get them with {get}, or give a local file with the filter option "
        f"`checkpoint: /path/to/open_clip_model.safetensors`."
    )


@contextlib.contextmanager
def _quiet_logging():
    """Mute open_clip's root-logger warning about random weights (library code never prints)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
