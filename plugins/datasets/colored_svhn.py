"""ColoredSVHN (Wyllie et al., Fairness Feedback Loops, 2024): SVHN house numbers in grey, painted green or red.

The reference code (``cleverhans-lab/FairFeedbackLoops``, ``prep_data/svhn.py``) colours SVHN as it colours MNIST
(see ``colored-mnist-wyllie``), with two differences it makes on purpose:

- each image is first turned grey (PIL's ``ImageOps.grayscale``: ITU-R 601-2 luma,
  ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``), and that grey image is painted into the green or red channel;
- class 1 (the advantaged class, more often green) is the digits *below* the threshold
  (``binary_label = 0 if label >= 5 else 1``), so ``positive`` defaults to ``"low"`` here.

Label noise (5 %), ``P(green | y) = (0.3, 0.7)`` on the train set and ``(0.5, 0.5)`` on the test set are the
same options as ``colored-mnist-wyllie``. Subgroup 0 = green, 1 = red (scope ``global``); the colour is observable,
so :meth:`ColoredSVHN.measure_subgroups` measures it from pixels. Images stay at SVHN's 32×32 (the reference code
upsamples them to 64×64 for its VAE, which adds no information).

On disk: torchvision's SVHN layout, ``<data_root>/train_32x32.mat`` and ``<data_root>/test_32x32.mat`` (also
found under ``<data_root>/svhn/`` or ``<data_root>/SVHN/``): MATLAB v5 files with ``X`` (uint8
``32×32×3×N``, height × width × channel × image) and ``y`` (``N×1``, digits 1..10, where 10 means the digit 0),
md5-checked against torchvision's list (``verify``); ``download=true`` fetches them with torchvision. The
``extra_32x32.mat`` split is not used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from harness.errors import DataError
from harness.interfaces import Dataset, DatasetBundle
from harness.interfaces import Options as BaseOptions
from plugins.datasets._common import check_size, stratified_pick
from plugins.datasets.colored_mnist import WyllieOptions, color_rgb, measure_colors, paint, wyllie_split

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: torchvision's ``SVHN.split_list`` (file name and md5 per split); ``tests/test_fairness_datasets.py`` checks that
#: they still agree with the installed torchvision.
FILES_MD5: dict[str, tuple[str, str]] = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
}
FOLDERS: tuple[str, ...] = ("svhn", "SVHN")
SIDE = 32

_STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET = 3, 4


def download_hint(root: Path | str) -> str:
    return (
        f"get them with `python -c \"import torchvision; [torchvision.datasets.SVHN('{root}', split=s, download=True) "
        "for s in ('train', 'test')]\"` (or the dataset option download=true), or from "
        "http://ufldl.stanford.edu/housenumbers/ (Format 2: train_32x32.mat, test_32x32.mat), and point --data-root at "
        "the folder that holds them"
    )


class ColoredSVHNOptions(WyllieOptions):
    """Options of the ``colored-svhn`` dataset."""

    positive: Literal["high", "low"] = Field(
        "low", description="Which digits are class 1 (the advantaged class): low = digits below threshold (the "
        "reference code's choice), high = digits >= threshold."
    )
    verify: bool = Field(True, description="Check each .mat file's md5 against torchvision's.")
    download: bool = Field(False, description="Download the two .mat files into data_root with torchvision.")
    train_size: int | None = Field(None, ge=1, description="Subsample of the train set, stratified by digit.")
    test_size: int | None = Field(None, ge=1, description="Subsample of the test set, stratified by digit.")
    seed: int = Field(0, ge=0, description="Seed of the label noise, colouring and subsampling RNG (numpy).")


def find_svhn_dir(root: Path) -> Path | None:
    """The folder holding both ``.mat`` files: ``root`` itself, ``root/svhn`` or ``root/SVHN``."""
    for candidate in (root, *(root / f for f in FOLDERS)):
        if all((candidate / name).is_file() for name, _ in FILES_MD5.values()):
            return candidate
    return None


def download_svhn(root: Path) -> None:
    """Download both splits with torchvision (md5-checked by torchvision; needs internet)."""
    try:
        import torchvision

        root.mkdir(parents=True, exist_ok=True)
        for split in FILES_MD5:
            torchvision.datasets.SVHN(str(root), split=split, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"downloading SVHN into {root} failed ({exc}); {download_hint(root)}.") from None


def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``N×3×H×W`` → uint8 ``N×H×W``, exactly as PIL's ``convert("L")``:
    ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``."""
    x = rgb.astype(np.uint32)
    return ((x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def read_split(path: Path, *, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """One ``.mat`` file → (uint8 ``N×3×32×32`` images, int64 digits 0..9).

    :raises DataError: unreadable, or not SVHN's ``X`` / ``y`` layout.
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except Exception as exc:  # scipy raises many types for damaged files
        raise DataError(f"colored-svhn: cannot read {path} ({type(exc).__name__}: {exc}); {hint}.") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"colored-svhn: {path} lacks the variables X and y of SVHN's format 2; {hint}.")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    n = x.shape[-1] if x.ndim == 4 else -1
    if x.dtype != np.uint8 or x.shape[:3] != (SIDE, SIDE, 3) or y.shape not in ((n, 1), (n,)) or n < 1:
        raise DataError(
            f"colored-svhn: {path} has X {x.dtype} {x.shape} and y {y.shape}, expected uint8 32×32×3×N and N×1; "
            f"{hint}."
        )
    labels = y.reshape(-1)
    if not np.all((labels >= 1) & (labels <= 10) & (labels == np.round(labels))):
        raise DataError(f"colored-svhn: {path} has labels outside 1..10; {hint}.")
    digits = labels.astype(np.int64) % 10  # SVHN's label 10 is the digit 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), digits


class ColoredSVHN(Dataset):
    """SVHN in grey, painted green or red; binary label (digit below 5 or not), colour = subgroup."""

    Options: ClassVar[type[BaseOptions]] = ColoredSVHNOptions

    options: ColoredSVHNOptions

    @property
    def color_rgb(self) -> np.ndarray:
        """``2×3`` uint8 RGB of the subgroup colours."""
        return color_rgb(self.options.colors)

    def _folder(self) -> tuple[Path, str]:
        """The folder with both files and the how-to-get-them clause; downloads them when asked to."""
        if self.data_root is None:
            raise DataError(f"colored-svhn needs its .mat files but no --data-root was given; {download_hint('DIR')}.")
        root = Path(self.data_root).expanduser()
        if self.options.download and find_svhn_dir(root) is None:
            download_svhn(root)
        folder = find_svhn_dir(root)
        if folder is None:
            missing = [name for name, _ in FILES_MD5.values() if not (root / name).is_file()]
            raise DataError(
                f"colored-svhn: {' and '.join(missing)} not found under {root} (nor under {root}/svhn); "
                f"{download_hint(root)}."
            )
        return folder, f"delete the damaged file and {download_hint(root)}"

    def _verify(self, folder: Path, hint: str) -> dict[str, str] | None:
        if not self.options.verify:
            return None
        md5s = {}
        for name, expected in FILES_MD5.values():
            md5s[name] = file_md5(folder / name)
            if md5s[name] != expected:
                raise DataError(f"colored-svhn: {folder / name} is corrupt (md5 {md5s[name]}, expected {expected}); "
                                f"{hint}.")
        return md5s

    def load(self) -> DatasetBundle:
        import torch

        from harness.imageset import ImageSet

        o = self.options
        folder, hint = self._folder()
        md5s = self._verify(folder, hint)
        rgb = self.color_rgb
        sets: dict[str, ImageSet] = {}
        records: dict[str, Any] = {}
        sha = hashlib.sha256()
        for split, size, stream in (("train", o.train_size, _STREAM_TRAIN_SUBSET),
                                    ("test", o.test_size, _STREAM_TEST_SUBSET)):
            path = folder / FILES_MD5[split][0]
            images, digits = read_split(path, hint=hint)
            sha.update(images.tobytes())
            sha.update(digits.tobytes())
            available = int(digits.size)
            idx = stratified_pick(digits, size, np.random.default_rng([o.seed, stream]),
                                  what=f"colored-svhn option {split}_size")
            images, digits = images[idx], digits[idx]
            labels, colors, records[split] = wyllie_split(digits, o, split, o.seed)  # type: ignore[arg-type]
            painted = paint(grayscale(images), rgb, colors)
            sets[split] = ImageSet.create(torch.from_numpy(painted), torch.from_numpy(labels),
                                          torch.from_numpy(colors))
            records[split]["source_images"] = available
        train, test = sets["train"], sets["test"]
        names = o.class_names()
        info = {
            "source": "torchvision-svhn",
            "path": str(folder),
            "sha256": sha.hexdigest(),
            "sha256_of": "the uint8 N×3×32×32 images and int64 digits of train, then test",
            "verified": o.verify,
            "md5": md5s,
            "num_images": len(train) + len(test),
            "num_train": len(train),
            "num_test": len(test),
            "rule": f"class 1 = {names[1]}",
            "colors": {name: [int(v) for v in c] for name, c in zip(o.colors, rgb, strict=True)},
            "train": records["train"],
            "test": records["test"],
            "colored_sha256": train.sha256(),
            "colored_test_sha256": test.sha256(),
        }
        return DatasetBundle(
            train=train,
            test=test,
            class_names=names,
            subgroup_names=tuple(o.colors),
            subgroup_scope="global",
            source=info,
        )

    def check(self) -> str:
        import scipy.io

        o = self.options
        folder, hint = self._folder()
        self._verify(folder, hint)
        counts = {}
        for split, (name, _) in FILES_MD5.items():
            try:
                shapes = {v: shape for v, shape, _ in scipy.io.whosmat(str(folder / name))}
            except Exception as exc:  # damaged headers raise many types
                raise DataError(f"colored-svhn: cannot read {folder / name} ({type(exc).__name__}: {exc}); "
                                f"{hint}.") from None
            x = shapes.get("X")
            if x is None or "y" not in shapes or len(x) != 4 or tuple(x[:3]) != (SIDE, SIDE, 3):
                raise DataError(f"colored-svhn: {folder / name} is not SVHN's format 2 (X 32×32×3×N, y N×1); {hint}.")
            counts[split] = int(x[3])
        check_size(o.train_size, counts["train"], what="colored-svhn option train_size")
        check_size(o.test_size, counts["test"], what="colored-svhn option test_size")
        names = o.class_names()
        ok = "md5 ok" if o.verify else "not verified"
        return (f"SVHN at {folder}: {o.train_size or counts['train']} train / {o.test_size or counts['test']} test "
                f"images, classes {names[0]} / {names[1]}, 2 colours ({ok})")

    def measure_subgroups(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Colour index measured from pixels (see :func:`~plugins.datasets.colored_mnist.measure_colors`); ``-1``
        for an almost black image."""
        return measure_colors(images, self.color_rgb)
