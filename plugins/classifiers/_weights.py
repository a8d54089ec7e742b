"""Pretrained weights for the classifier plugins: found on disk or refused, never downloaded.

Lookup order for ``pretrained: true`` (the first hit wins and is recorded with its sha256):

1. ``weights: PATH`` — a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file (a bare state dict, or a
   checkpoint holding one under ``state_dict`` / ``model``).
2. The Hugging Face hub cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), read offline with
   :func:`huggingface_hub.try_to_load_from_cache` — which only looks at files, never at the network.
3. The torch hub cache (``$TORCH_HOME/hub/checkpoints``), where torchvision and older timm put their downloads.

Nothing here opens a network connection. When no file is found the caller raises
:class:`harness.errors.WeightsError` with one sentence saying how to get it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.engine.rundir import file_sha256
from harness.errors import ConfigError, WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def fit_channels(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """Per-channel statistics of an RGB model for ``channels`` inputs (grey: the mean, as timm does)."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels


def check_weights_option(value: str | None) -> str | None:
    """Validator for the ``weights`` option: a path with a known suffix (existence is checked at build)."""
    if value is not None and not value.lower().endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"weights must be a {'/'.join(WEIGHT_SUFFIXES)} file, got {value!r}")
    return value


@dataclass(frozen=True)
class WeightsSource:
    """Where pretrained weights came from: ``origin`` is ``file``, ``hf-cache`` or ``torch-hub-cache``."""

    path: Path
    origin: str

    def describe(self) -> dict[str, Any]:
        return {"origin": self.origin, "path": str(self.path), "sha256": file_sha256(self.path)}


def local_file(path: str) -> WeightsSource:
    """The user's ``weights`` file, or :class:`WeightsError` when it is not there."""
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise WeightsError(f"weights file {str(p)!r} does not exist; check the classifier's `weights` option.")
    return WeightsSource(p, "file")


def torch_hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_in_hf_cache(repo_id: str, filenames: Iterable[str] = HF_FILENAMES) -> Path | None:
    """A file of ``repo_id`` already in the Hugging Face cache, looked up offline (no request is made)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return None
    repo_id, _, revision = repo_id.partition("@")
    for filename in filenames:
        hit = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def find_in_torch_hub(filenames: Iterable[str]) -> Path | None:
    root = torch_hub_checkpoints()
    for name in filenames:
        if name and (root / name).is_file():
            return root / name
    return None


def url_filename(url: str | None) -> str | None:
    return os.path.basename(urlparse(url).path) if url else None


def find_timm_weights(name: str, *, extra_torch_hub_files: Sequence[str] = ()) -> WeightsSource:
    """Cached pretrained weights of timm model ``name`` (``arch`` or ``arch.tag``), else :class:`WeightsError`."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise WeightsError(
            f"timm has no pretrained weights for {name!r}; pass a local file with the classifier's "
            f"`weights` option, or set pretrained: false."
        )
    hf_id = cfg.hf_hub_id
    if hf_id:
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILENAMES
        hit = find_in_hf_cache(hf_id, names)
        if hit is not None:
            return WeightsSource(hit, "hf-cache")
    hit = find_in_torch_hub([url_filename(cfg.url), *extra_torch_hub_files])
    if hit is not None:
        return WeightsSource(hit, "torch-hub-cache")
    if hf_id:
        fetch = f"run `hf download {hf_id.partition('@')[0]}` on a machine with network to fill the Hugging Face cache"
    else:
        fetch = f"download {cfg.url} into {torch_hub_checkpoints()}"
    raise WeightsError(
        f"pretrained weights for {name!r} are not on disk and nothing is downloaded at run time: {fetch}, "
        f"or pass the file with the classifier's `weights` option."
    )


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` checkpoint (``weights_only``)."""
    import torch

    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file is the user's to fix
        raise WeightsError(f"cannot read weights file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if isinstance(sd, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(sd.get(key), Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping):
        raise WeightsError(f"weights file {str(path)!r} holds a {type(sd).__name__}, not a state dict.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def weights_mismatch(path: Path, arch: str, exc: Exception) -> WeightsError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return WeightsError(f"weights file {str(path)!r} does not fit {arch}: {detail}")


def did_you_mean(name: str, choices: Sequence[str], what: str) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown {what} {name!r}.{hint}")


def _signature(t: Any) -> tuple[int, float, float]:
    import torch

    x = t.detach().reshape(-1).to(torch.float64)
    return x.numel(), float(f"{x.sum().item():.9g}"), float(f"{x.square().sum().item():.9g}")


def _tensors(obj: Any, depth: int = 0) -> Iterable[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping) and depth < 3:
        for v in obj.values():
            yield from _tensors(v, depth + 1)


def check_loaded(model: Any, source: WeightsSource, arch: str, *, min_fraction: float = 0.5) -> float:
    """Verify that most of ``model``'s parameters came from ``source``; return the loaded fraction.

    timm loads non-strictly whenever the head is replaced, so a checkpoint of another architecture would load
    nothing and only log a warning. Each parameter is matched by value (size, sum, sum of squares) against every
    tensor in the file, which survives the renaming and reshaping of timm's checkpoint filters. Resampled
    parameters (a ViT's position embedding), the new head and an adapted first conv do not match, so the test
    asks for a majority of the parameters, not all.
    """
    import torch

    try:
        if str(source.path).endswith(".safetensors"):
            from safetensors.torch import load_file

            ckpt: Any = load_file(str(source.path), device="cpu")
        else:
            ckpt = torch.load(source.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"cannot read weights file {str(source.path)!r}: {type(exc).__name__}: {exc}") from exc
    known = {_signature(t) for t in _tensors(ckpt) if t.is_floating_point()}
    total = loaded = 0
    for p in model.parameters():
        total += p.numel()
        if _signature(p) in known:
            loaded += p.numel()
    fraction = loaded / max(total, 1)
    if fraction < min_fraction:
        raise WeightsError(
            f"weights file {str(source.path)!r} does not fit {arch}: only {fraction:.0%} of its parameters "
            f"were found in the file."
        )
    return fraction
