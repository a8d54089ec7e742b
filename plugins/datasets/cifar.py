"""CIFAR-100 as CIFAR-20 (superclasses, with the fine classes as subgroups) and as CIFAR-100 (fine classes).

On disk: torchvision's layout, ``<data_root>/cifar-100-python/{train,test,meta}`` (``<data_root>`` itself also
works when it holds the three files): Python pickles of dicts with bytes keys — ``b"data"`` (uint8 ``N×3072``,
1024 red, then green, then blue values of a row-major 32×32 image), ``b"fine_labels"``, ``b"coarse_labels"``;
``meta`` has ``b"fine_label_names"`` and ``b"coarse_label_names"``. Each file is md5-checked against the values
torchvision lists (``verify``); ``download=true`` fetches and extracts the archive with torchvision (itself
md5-checked). The pickles are read with an unpickler that only admits numpy arrays and plain containers.

- ``cifar20``: 20 classes = the coarse labels, named readably ("aquatic mammals", "vehicles 1", …). Subgroups
  (``subgroup_scope = "per_class"``, ``G = 5``) = the 5 fine classes of each superclass, in ascending fine-label
  order (alphabetical), e.g. "aquatic mammals" → (beaver, dolphin, otter, seal, whale). The mapping is the
  standard CIFAR-100 one, embedded in :data:`SUPERCLASSES`; the loader checks the files' coarse labels against it.
- ``cifar100``: 100 classes = the fine labels. A subgroup that is a function of the class (its superclass) is
  not a fairness subgroup — every class would sit in one group, the oracle's joint (class, subgroup) task would
  collapse to the class, and ``u_t`` would be 0 by construction. So by default ``groups = "none"``: one global
  group (``G = 1``), subgroup metrics ``None``. ``groups = "superclass"`` reports the 20 superclasses as a global
  attribute (``G = 20``; TPR per superclass, pooled over its fine classes) for those who want that view.

Option ``imbalance`` plants a known subgroup bias in the *training* set (the test set stays as released, 100
images per fine class): either ``{"fraction": 0.1, "subgroups": [0]}`` — in every superclass keep 10% of the
training images of its subgroup 0 (its first fine class) — or ``{"fine_classes": {"otter": 0.1, "ray": 0.25}}`` —
an explicit fraction per fine class. ``round(fraction × n)`` images are kept (half up), chosen with
``numpy.random.default_rng([seed, 3])``; ``train_size`` / ``test_size`` then subsample stratified by fine class.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from harness.errors import DataError
from harness.interfaces import Dataset, DatasetBundle
from harness.interfaces import Options as BaseOptions
from plugins.datasets._common import natural_image_paper_defaults, stratified_pick

if TYPE_CHECKING:  # pragma: no cover
    from harness.imageset import ImageSet

#: torchvision's ``CIFAR100`` constants (``base_folder``, ``url``, ``tgz_md5``, ``train_list``, ``test_list``,
#: ``meta``); ``tests/test_cifar.py`` checks they still agree with the installed torchvision.
BASE_FOLDER = "cifar-100-python"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
TGZ_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FILES_MD5: dict[str, str] = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}

#: The 20 superclasses (coarse label order) with their 5 fine classes (CIFAR-100's official names).
SUPERCLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("aquatic_mammals", ("beaver", "dolphin", "otter", "seal", "whale")),
    ("fish", ("aquarium_fish", "flatfish", "ray", "shark", "trout")),
    ("flowers", ("orchid", "poppy", "rose", "sunflower", "tulip")),
    ("food_containers", ("bottle", "bowl", "can", "cup", "plate")),
    ("fruit_and_vegetables", ("apple", "mushroom", "orange", "pear", "sweet_pepper")),
    ("household_electrical_devices", ("clock", "keyboard", "lamp", "telephone", "television")),
    ("household_furniture", ("bed", "chair", "couch", "table", "wardrobe")),
    ("insects", ("bee", "beetle", "butterfly", "caterpillar", "cockroach")),
    ("large_carnivores", ("bear", "leopard", "lion", "tiger", "wolf")),
    ("large_man-made_outdoor_things", ("bridge", "castle", "house", "road", "skyscraper")),
    ("large_natural_outdoor_scenes", ("cloud", "forest", "mountain", "plain", "sea")),
    ("large_omnivores_and_herbivores", ("camel", "cattle", "chimpanzee", "elephant", "kangaroo")),
    ("medium_mammals", ("fox", "porcupine", "possum", "raccoon", "skunk")),
    ("non-insect_invertebrates", ("crab", "lobster", "snail", "spider", "worm")),
    ("people", ("baby", "boy", "girl", "man", "woman")),
    ("reptiles", ("crocodile", "dinosaur", "lizard", "snake", "turtle")),
    ("small_mammals", ("hamster", "mouse", "rabbit", "shrew", "squirrel")),
    ("trees", ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree")),
    ("vehicles_1", ("bicycle", "bus", "motorcycle", "pickup_truck", "train")),
    ("vehicles_2", ("lawn_mower", "rocket", "streetcar", "tank", "tractor")),
)
COARSE_LABEL_NAMES: tuple[str, ...] = tuple(name for name, _ in SUPERCLASSES)
#: The 100 fine classes in fine-label order (alphabetical, as in ``meta``).
FINE_LABEL_NAMES: tuple[str, ...] = tuple(sorted(f for _, fines in SUPERCLASSES for f in fines))
#: Coarse label of each fine label.
COARSE_OF_FINE: tuple[int, ...] = tuple(
    next(c for c, (_, fines) in enumerate(SUPERCLASSES) if f in fines) for f in FINE_LABEL_NAMES
)
#: Position of each fine label within its superclass (the cifar20 subgroup).
SUBGROUP_OF_FINE: tuple[int, ...] = tuple(SUPERCLASSES[c][1].index(f) for f, c in zip(FINE_LABEL_NAMES,
                                                                                      COARSE_OF_FINE, strict=True))
G_PER_CLASS = 5

_STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET, _STREAM_IMBALANCE = 1, 2, 3


def readable(name: str) -> str:
    """``"large_man-made_outdoor_things"`` → ``"large man-made outdoor things"``."""
    return name.replace("_", " ")


def download_hint(root: Path | str) -> str:
    return (
        f"get it with `python -c \"import torchvision; torchvision.datasets.CIFAR100('{root}', download=True)\"` "
        "(or the dataset option download=true), or point --data-root at a folder that contains cifar-100-python/"
    )


# --------------------------------------------------------------------------------------------------- options


class Imbalance(BaseOptions):
    """A planted subgroup bias: keep only a fraction of the training images of chosen fine classes."""

    fraction: float | None = Field(
        None, ge=0.0, le=1.0, description="Fraction kept of the chosen subgroups' training images, in every superclass."
    )
    subgroups: tuple[int, ...] = Field(
        (0,), description="With fraction: positions 0-4 of the fine classes within each superclass."
    )
    fine_classes: dict[str, float] | None = Field(
        None, description="Instead of fraction: fine-class name → fraction of its training images kept."
    )

    @field_validator("subgroups", mode="before")
    @classmethod
    def _subgroups_list(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("subgroups")
    @classmethod
    def _subgroups(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or len(set(value)) != len(value) or any(not 0 <= g < G_PER_CLASS for g in value):
            raise ValueError(f"subgroups must be distinct positions in 0..{G_PER_CLASS - 1}, got {list(value)}")
        return value

    @field_validator("fine_classes")
    @classmethod
    def _fine_classes(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        out = {}
        for name, frac in value.items():
            key = name.strip().lower().replace(" ", "_")
            if key not in FINE_LABEL_NAMES:
                raise ValueError(f"unknown CIFAR-100 fine class {name!r} (e.g. 'otter', 'maple tree')")
            if not 0.0 <= float(frac) <= 1.0:
                raise ValueError(f"fraction for {name!r} must be in [0, 1], got {frac}")
            out[key] = float(frac)
        if not out:
            raise ValueError("fine_classes needs at least one class")
        return dict(sorted(out.items()))

    @model_validator(mode="after")
    def _one_form(self) -> Imbalance:
        if (self.fraction is None) == (self.fine_classes is None):
            raise ValueError("imbalance takes either fraction (with subgroups) or fine_classes, not both or neither")
        return self

    def fractions(self) -> dict[int, float]:
        """Fine label → fraction kept, for the affected fine classes."""
        if self.fine_classes is not None:
            return {FINE_LABEL_NAMES.index(k): v for k, v in self.fine_classes.items()}
        assert self.fraction is not None
        return {f: self.fraction for f in range(100) if SUBGROUP_OF_FINE[f] in self.subgroups}


class CIFAROptions(BaseOptions):
    """Options shared by ``cifar20`` and ``cifar100``."""

    download: bool = Field(False, description="Download CIFAR-100 into data_root with torchvision when missing.")
    verify: bool = Field(True, description="Check each file's md5 against torchvision's.")
    train_size: int | None = Field(None, ge=1, description="Stratified (by fine class) subsample of the train set.")
    test_size: int | None = Field(None, ge=1, description="Stratified (by fine class) subsample of the test set.")
    imbalance: Imbalance | None = Field(None, description="Keep only a fraction of chosen fine classes' train images.")
    seed: int = Field(0, ge=0, description="Seed of the imbalance and subsampling RNG.")


class CIFAR100Options(CIFAROptions):
    groups: Literal["none", "superclass"] = Field(
        "none", description="none: one global group (G = 1); superclass: the 20 superclasses as a global attribute."
    )


# --------------------------------------------------------------------------------------------------- reading


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what CIFAR pickles need: numpy array reconstruction and bytes (any other global is refused)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")


def _unpickle(data: bytes) -> dict[str, Any]:
    """A CIFAR pickle → dict with str keys (the files have bytes keys; str keys are accepted too)."""
    obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(value: Any) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in value]


def find_cifar_dir(root: Path) -> Path | None:
    for candidate in (root / BASE_FOLDER, root):
        if all((candidate / name).is_file() for name in FILES_MD5):
            return candidate
    return None


def download_cifar100(root: Path) -> None:
    """Download and extract CIFAR-100 with torchvision (md5-checked by torchvision; needs internet)."""
    try:
        import torchvision

        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    except Exception as exc:  # network and archive errors come in many types
        raise DataError(f"downloading CIFAR-100 into {root} failed ({exc}); {download_hint(root)}.") from None


def read_cifar100(root: Path, *, verify: bool = True) -> dict[str, Any]:
    """Read and validate the three files under ``root`` (see :func:`find_cifar_dir`).

    :returns: ``{"train": (images N×3×32×32, fine, coarse), "test": (...), "dir", "md5", "sha256"}``.
    :raises DataError: missing, corrupt (md5), malformed, or inconsistent with the standard superclasses.
    """
    folder = find_cifar_dir(root)
    if folder is None:
        raise DataError(f"CIFAR-100 not found under {root} (no {root / BASE_FOLDER}/{{train,test,meta}}); "
                        f"{download_hint(root)}.")
    hint = f"delete {folder} and {download_hint(root)}"
    raw: dict[str, bytes] = {}
    md5s: dict[str, str] = {}
    combined = hashlib.sha256()
    for name, expected in FILES_MD5.items():
        path = folder / name
        try:
            raw[name] = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path} ({exc}); {hint}.") from None
        md5s[name] = hashlib.md5(raw[name], usedforsecurity=False).hexdigest() if verify else ""
        if verify and md5s[name] != expected:
            raise DataError(f"{path} is corrupt (md5 {md5s[name]}, expected {expected}); {hint}.")
        combined.update(raw[name])
    parsed: dict[str, dict[str, Any]] = {}
    for name in FILES_MD5:
        try:
            parsed[name] = _unpickle(raw[name])
        except Exception as exc:  # malformed pickles raise many types
            raise DataError(f"{folder / name} is not a CIFAR-100 pickle ({exc}); {hint}.") from None
    meta = parsed["meta"]
    try:
        fine_names, coarse_names = _names(meta["fine_label_names"]), _names(meta["coarse_label_names"])
    except KeyError as exc:
        raise DataError(f"{folder / 'meta'} lacks {exc}; {hint}.") from None
    if tuple(fine_names) != FINE_LABEL_NAMES or tuple(coarse_names) != COARSE_LABEL_NAMES:
        raise DataError(f"{folder / 'meta'} names other classes than CIFAR-100's; {hint}.")
    out: dict[str, Any] = {"dir": folder, "md5": md5s, "sha256": combined.hexdigest()}
    expected_coarse = np.asarray(COARSE_OF_FINE, dtype=np.int64)
    for name in ("train", "test"):
        d = parsed[name]
        try:
            data = np.asarray(d["data"])
            fine = np.asarray(d["fine_labels"], dtype=np.int64)
            coarse = np.asarray(d["coarse_labels"], dtype=np.int64)
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{folder / name} lacks or mangles {exc}; {hint}.") from None
        n = fine.shape[0]
        if data.dtype != np.uint8 or data.shape != (n, 3072) or coarse.shape != (n,) or n == 0:
            raise DataError(
                f"{folder / name} has data {data.dtype} {data.shape} for {n} fine and {coarse.shape[0]} coarse "
                f"labels (expected uint8 N×3072); {hint}."
            )
        if fine.min() < 0 or fine.max() > 99:
            raise DataError(f"{folder / name} has fine labels outside 0..99; {hint}.")
        if not np.array_equal(coarse, expected_coarse[fine]):
            bad = int(np.flatnonzero(coarse != expected_coarse[fine])[0])
            raise DataError(
                f"{folder / name} maps fine class {FINE_LABEL_NAMES[fine[bad]]} to coarse label {coarse[bad]}, not "
                f"the standard CIFAR-100 superclass {expected_coarse[fine[bad]]}; {hint}."
            )
        out[name] = (data.reshape(n, 3, 32, 32), fine, coarse)
    return out


def keep_fractions(fine: np.ndarray, fractions: dict[int, float], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Sorted indices kept after keeping ``round(f × n)`` (half up) images of each fine class in ``fractions``."""
    keep = np.ones(fine.shape[0], dtype=bool)
    report = {}
    for f in sorted(fractions):
        idx = np.flatnonzero(fine == f)
        k = int(np.floor(fractions[f] * idx.size + 0.5))
        drop = rng.permutation(idx)[k:]
        keep[drop] = False
        report[FINE_LABEL_NAMES[f]] = {"fraction": fractions[f], "kept": k, "of": int(idx.size)}
    return np.flatnonzero(keep), report


# --------------------------------------------------------------------------------------------------- plugins


class _CIFAR(Dataset):
    paper_defaults: ClassVar[dict[str, Any]] = natural_image_paper_defaults(keep=0.7, generations=10)
    dataset_name: ClassVar[str] = "cifar"

    options: CIFAROptions

    def _root(self) -> Path:
        if self.data_root is None:
            raise DataError(f"{self.dataset_name} needs the CIFAR-100 files but no --data-root was given; "
                            f"{download_hint('DIR')}.")
        return Path(self.data_root).expanduser()

    def _read(self) -> dict[str, Any]:
        root = self._root()
        if self.options.download and find_cifar_dir(root) is None:
            download_cifar100(root)
        return read_cifar100(root, verify=self.options.verify)

    def _split(self, raw: dict[str, Any]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
        """Fine-labelled train/test images after the imbalance and the subsampling."""
        o = self.options
        out, info = {}, {}
        for split, size, stream in (("train", o.train_size, _STREAM_TRAIN_SUBSET),
                                    ("test", o.test_size, _STREAM_TEST_SUBSET)):
            images, fine, _ = raw[split]
            idx = np.arange(fine.shape[0])
            if split == "train" and o.imbalance is not None:
                idx, info["imbalance"] = keep_fractions(
                    fine, o.imbalance.fractions(), np.random.default_rng([o.seed, _STREAM_IMBALANCE])
                )
            idx = idx[stratified_pick(fine[idx], size, np.random.default_rng([o.seed, stream]),
                                      what=f"{self.dataset_name} option {split}_size")]
            out[split] = (images[idx], fine[idx])
        return out, info

    def _labels(self, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _meta(self) -> tuple[tuple[str, ...], Any, Literal["global", "per_class"]]:
        raise NotImplementedError

    def load(self) -> DatasetBundle:
        import torch

        from harness.imageset import ImageSet

        raw = self._read()
        splits, extra = self._split(raw)
        sets: dict[str, ImageSet] = {}
        for split, (images, fine) in splits.items():
            labels, subgroups = self._labels(fine)
            sets[split] = ImageSet.create(
                torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), torch.from_numpy(subgroups)
            )
        class_names, subgroup_names, scope = self._meta()
        info = {
            "source": "cifar-100-python",
            "path": str(raw["dir"]),
            "sha256": raw["sha256"],
            "sha256_of": "bytes of train, test, meta",
            "verified": self.options.verify,
            "md5": dict(raw["md5"]) if self.options.verify else None,
            "source_images": int(raw["train"][1].size + raw["test"][1].size),
            "num_images": len(sets["train"]) + len(sets["test"]),
            "num_train": len(sets["train"]),
            "num_test": len(sets["test"]),
            **extra,
            "decoded_sha256": sets["train"].sha256(),
            "decoded_test_sha256": sets["test"].sha256(),
        }
        return DatasetBundle(
            train=sets["train"],
            test=sets["test"],
            class_names=class_names,
            subgroup_names=subgroup_names,
            subgroup_scope=scope,
            source=info,
        )

    def check(self) -> str:
        raw = self._read()
        splits, _ = self._split(raw)
        class_names, subgroup_names, scope = self._meta()
        g = len(subgroup_names[0]) if scope == "per_class" else len(subgroup_names)
        ok = "md5 ok" if self.options.verify else "not verified"
        return (
            f"CIFAR-100 at {raw['dir']}: {len(splits['train'][1])} train / {len(splits['test'][1])} test images, "
            f"{len(class_names)} classes, {'per-class' if scope == 'per_class' else 'global'} subgroups G = {g} ({ok})"
        )


class CIFAR20(_CIFAR):
    """CIFAR-100's 20 superclasses as classes; the 5 fine classes of each as its subgroups (per_class, G = 5)."""

    Options = CIFAROptions
    dataset_name: ClassVar[str] = "cifar20"

    def _labels(self, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(COARSE_OF_FINE, dtype=np.int64)[fine], np.asarray(SUBGROUP_OF_FINE, dtype=np.int64)[fine]

    def _meta(self) -> tuple[tuple[str, ...], Any, Literal["global", "per_class"]]:
        class_names = tuple(readable(c) for c in COARSE_LABEL_NAMES)
        subgroups = tuple(tuple(readable(f) for f in fines) for _, fines in SUPERCLASSES)
        return class_names, subgroups, "per_class"


class CIFAR100(_CIFAR):
    """CIFAR-100's 100 fine classes; one global group, or the 20 superclasses as a global attribute."""

    Options = CIFAR100Options
    dataset_name: ClassVar[str] = "cifar100"
    options: CIFAR100Options

    def _labels(self, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.options.groups == "superclass":
            return fine.astype(np.int64), np.asarray(COARSE_OF_FINE, dtype=np.int64)[fine]
        return fine.astype(np.int64), np.zeros_like(fine, dtype=np.int64)

    def _meta(self) -> tuple[tuple[str, ...], Any, Literal["global", "per_class"]]:
        class_names = tuple(readable(f) for f in FINE_LABEL_NAMES)
        if self.options.groups == "superclass":
            return class_names, tuple(readable(c) for c in COARSE_LABEL_NAMES), "global"
        return class_names, ("all",), "global"
