"""Hard ImageNet (Moayeri, Singla & Feizi, NeurIPS 2022 Datasets & Benchmarks): 15 ImageNet classes whose
objects come with strong spurious cues, with a segmentation mask for every image.

The classifier trains on ImageNet *train* images of the 15 classes and is tested on the ImageNet *validation*
images that have masks (the release's split: ``train/`` masks for ImageNet train images, ``val/`` masks for
ImageNet validation images). Besides the clean test accuracy it is evaluated on three ablated copies of the test
set (``DatasetBundle.variants``; the harness reports ``acc`` and ``drop`` = clean − ablated for each):

- ``object_gray`` — every object pixel (mask) set to gray (0.5 → 128 on the uint8 scale);
- ``bbox_gray`` — the object's bounding box set to gray;
- ``bbox_tile`` — the bounding box filled from the neighbouring context (see :func:`bbox_tile`).

A small drop means the model classifies from the context (the spurious cue), not from the object.

There are no known subgroups: ``subgroup_scope = "global"`` with one group (``G = 1``, every image in it), so the
subgroup metrics (MEO, DI, MD, …) are ``None`` and ``u_t`` is not defined; the ablation accuracies are the
bias measurement.

On-disk layout (``--data-root DIR``; both roots can also be given as options):

- ImageNet: ``DIR/imagenet/train/<wnid>/<wnid>_<n>.JPEG`` and ``DIR/imagenet/val/<wnid>/ILSVRC2012_val_<n>.JPEG``
  (validation images sorted into class folders), or option ``imagenet_root``.
- Masks, the official release (``hardImageNet.zip`` from the Box link in github.com/mmoayeri/HardImageNet,
  unzipped): ``DIR/hardImageNet/{train,val}/<wnid>_<image file name>``, one mask image per ImageNet image, named
  after it (e.g. ``val/n02777292_ILSVRC2012_val_00001234.JPEG`` for ``imagenet/val/n02777292/ILSVRC2012_val_00001234
  .JPEG``), any non-zero pixel = object; or option ``masks_root``. The release's ``meta/`` pickles and the
  spurious-cue rankings are not needed. Bounding boxes are derived from the masks, as the release's own ablation
  code does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from harness.errors import DataError
from harness.interfaces import Dataset, DatasetBundle
from harness.interfaces import Options as BaseOptions
from plugins.datasets import _imagefolder
from plugins.datasets._common import IMAGENET_PAPER_DEFAULTS, check_size, stratified_pick
from plugins.datasets._imagefolder import GRAY

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The 15 classes: (wnid, ImageNet-1k index, readable name), in this plugin's fixed label order. The wnids and
#: indices agree with BREEDS' ``dataset_class_info.json``; the release's ``meta/*.pkl`` files are not read.
CLASSES: tuple[tuple[str, int, str], ...] = (
    ("n03218198", 537, "dog sled"),
    ("n02492660", 379, "howler monkey"),
    ("n04162706", 785, "seat belt"),
    ("n04228054", 795, "ski"),
    ("n04356056", 837, "sunglasses"),
    ("n02807133", 433, "swimming cap"),
    ("n02777292", 416, "balance beam"),
    ("n03535780", 602, "horizontal bar"),
    ("n03899768", 706, "patio"),
    ("n04019541", 746, "hockey puck"),
    ("n03770439", 655, "miniskirt"),
    ("n04264628", 810, "space bar"),
    ("n04540053", 890, "volleyball"),
    ("n09835506", 981, "baseball player"),
    ("n04251144", 801, "snorkel"),
)
WNIDS: tuple[str, ...] = tuple(c[0] for c in CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c[2] for c in CLASSES)
VARIANTS: tuple[str, ...] = ("object_gray", "bbox_gray", "bbox_tile")
#: Folder names the release may be unzipped to, under ``data_root``.
MASK_FOLDERS: tuple[str, ...] = ("hardImageNet", "hard_imagenet", "HardImageNet")
MASKS_URL = "https://github.com/mmoayeri/HardImageNet"

_STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET = 1, 2


def masks_hint(where: str = "DIR/hardImageNet") -> str:
    return (
        f"get the Hard ImageNet masks (hardImageNet.zip, linked from {MASKS_URL}) and unzip them so that "
        f"{where}/train/ and {where}/val/ hold files named <wnid>_<ImageNet file name>, then pass --data-root DIR "
        "or the dataset option masks_root"
    )


class HardImageNetOptions(BaseOptions):
    """Options of the ``hard-imagenet`` dataset."""

    imagenet_root: str | None = Field(
        None, description="ImageNet folder with train/<wnid>/ and val/<wnid>/; default <data_root>/imagenet."
    )
    masks_root: str | None = Field(
        None, description="The unzipped Hard ImageNet release (train/, val/); default <data_root>/hardImageNet."
    )
    resolution: int = Field(64, ge=8, le=512, description="Working side in pixels (64 on CPU; 224 on a GPU).")
    crop: float = Field(0.875, gt=0.0, le=1.0, description="Centre crop: fraction of the short side kept.")
    train_images: Literal["masked", "all"] = Field(
        "masked", description="masked: the release's train split (ImageNet train images with a mask); all: every "
        "ImageNet train image of the 15 classes."
    )
    variants: tuple[Literal["object_gray", "bbox_gray", "bbox_tile"], ...] = Field(
        VARIANTS, description="Ablated test sets to evaluate on."
    )
    train_size: int | None = Field(None, ge=1, description="Stratified, deterministic subsample of the train set.")
    test_size: int | None = Field(None, ge=1, description="Stratified, deterministic subsample of the test set.")
    seed: int = Field(0, ge=0, description="Seed of the subsampling RNG.")
    workers: int | None = Field(None, ge=1, description="JPEG decoding processes (default: min(8, CPUs)).")
    cache: bool = Field(True, description="Cache decoded images as shards under the cache directory.")

    @field_validator("variants", mode="before")
    @classmethod
    def _variants_list(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("variants")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"variants must be distinct, got {list(value)}")
        return value


# --------------------------------------------------------------------------------------------------- ablations


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)``, inclusive, of the non-zero pixels of a 2-D mask; ``None`` when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def object_gray(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``C×H×W`` uint8 image with every pixel of the 2-D ``mask`` set to :data:`GRAY`."""
    out = image.copy()
    out[:, mask.astype(bool)] = GRAY
    return out


def bbox_gray(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask's bounding box set to :data:`GRAY` (unchanged when the mask is empty)."""
    out = image.copy()
    box = mask_bbox(mask)
    if box is not None:
        top, bottom, left, right = box
        out[:, top : bottom + 1, left : right + 1] = GRAY
    return out


def bbox_tile(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """The mask's bounding box filled with the neighbouring context; returns ``(image, fell_back_to_gray)``.

    The box (height ``h``, width ``w``; it holds every object pixel, so its neighbourhood holds none) has four
    neighbouring strips of the same extent: the ``k = min(w, room)`` columns just left / right of it (same rows)
    and the ``k = min(h, room)`` rows just above / below it (same columns), ``room`` being the distance to the
    image border. The strip with the largest area is the tile (ties: left, right, above, below). The box is filled
    by continuing the tile periodically: a box column ``x`` (for a left/right tile starting at column ``t``) takes
    column ``t + ((x − t) mod k)``, rows likewise for an above/below tile — a pure shift by ``w`` (``h``) when the
    strip is whole. When the box touches all four borders there is no context; the box is then set to gray.
    This is the release's "tile" ablation (``ablations.py``) with one box for the whole mask (so ``bbox_gray`` and
    ``bbox_tile`` remove exactly the same pixels) rather than one box per connected component.
    """
    out = image.copy()
    box = mask_bbox(mask)
    if box is None:
        return out, False
    _, height, width = image.shape
    top, bottom, left, right = box
    h, w = bottom - top + 1, right - left + 1
    candidates = (  # (name, k, area, start of the strip)
        ("left", min(w, left), min(w, left) * h, left - min(w, left)),
        ("right", min(w, width - 1 - right), min(w, width - 1 - right) * h, right + 1),
        ("above", min(h, top), min(h, top) * w, top - min(h, top)),
        ("below", min(h, height - 1 - bottom), min(h, height - 1 - bottom) * w, bottom + 1),
    )
    name, k, area, start = max(candidates, key=lambda c: c[2])  # max keeps the first of equal areas
    if area == 0:
        out[:, top : bottom + 1, left : right + 1] = GRAY
        return out, True
    if name in ("left", "right"):
        cols = start + (np.arange(left, right + 1) - start) % k
        out[:, top : bottom + 1, left : right + 1] = image[:, top : bottom + 1][:, :, cols]
    else:
        rows = start + (np.arange(top, bottom + 1) - start) % k
        out[:, top : bottom + 1, left : right + 1] = image[:, rows][:, :, left : right + 1]
    return out, False


def ablate(
    images: torch.Tensor, masks: torch.Tensor, variants: tuple[str, ...] = VARIANTS
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The ablated copies of ``images`` (uint8 ``N×3×H×W``) given ``masks`` (``N×1×H×W``, non-zero = object).

    :returns: ``({variant: images}, {"empty_masks": n, "tile_fell_back_to_gray": n})``.
    """
    import torch

    x = images.numpy()
    m = masks.numpy()[:, 0] != 0
    out = {v: np.empty_like(x) for v in variants}
    fallback = 0
    for i in range(x.shape[0]):
        if "object_gray" in out:
            out["object_gray"][i] = object_gray(x[i], m[i])
        if "bbox_gray" in out:
            out["bbox_gray"][i] = bbox_gray(x[i], m[i])
        if "bbox_tile" in out:
            out["bbox_tile"][i], fell = bbox_tile(x[i], m[i])
            fallback += int(fell)
    stats = {"empty_masks": int((~m.reshape(m.shape[0], -1).any(1)).sum()), "tile_fell_back_to_gray": fallback}
    return {v: torch.from_numpy(a) for v, a in out.items()}, stats


# --------------------------------------------------------------------------------------------------- plugin


class HardImageNet(Dataset):
    """Hard ImageNet: 15 classes, G = 1, three ablation variants of the test set (see the module docstring)."""

    Options = HardImageNetOptions
    paper_defaults: ClassVar[dict[str, Any]] = IMAGENET_PAPER_DEFAULTS

    options: HardImageNetOptions

    # ------------------------------------------------------------------ files

    def _masks_root(self) -> Path:
        o = self.options
        if o.masks_root:
            root = Path(o.masks_root).expanduser()
            candidates = [root]
        elif self.data_root is None:
            raise DataError(f"hard-imagenet needs its masks but no --data-root was given; {masks_hint()}.")
        else:
            candidates = [Path(self.data_root).expanduser() / name for name in MASK_FOLDERS]
        for root in candidates:
            if (root / "train").is_dir() and (root / "val").is_dir():
                return root
        where = candidates[0]
        raise DataError(f"hard-imagenet masks not found (no {where}/train and {where}/val); {masks_hint(str(where))}.")

    def _masks(self, masks_root: Path, split: str) -> list[list[tuple[str, str]]]:
        """Per class, the ``(mask file, image file name)`` pairs of ``split``, sorted by file name."""
        folder = masks_root / split
        per_class: dict[str, list[tuple[str, str]]] = {w: [] for w in WNIDS}
        foreign = []
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it if e.is_file() and not e.name.startswith("."))
        for name in names:
            wnid, sep, rest = name.partition("_")
            if not sep or not rest:
                continue
            if wnid in per_class:
                per_class[wnid].append((str(folder / name), rest))
            elif wnid.startswith("n") and wnid[1:].isdigit():
                foreign.append(name)
        if foreign:
            raise DataError(
                f"hard-imagenet: {folder} holds masks of classes that are not Hard ImageNet's (e.g. {foreign[0]}): "
                f"it is not the release's folder; {masks_hint(str(masks_root))}."
            )
        empty = [w for w, v in per_class.items() if not v]
        if empty:
            raise DataError(
                f"hard-imagenet: {folder} has no masks for {len(empty)} of the 15 classes ({', '.join(empty[:5])}); "
                f"the release is incomplete, {masks_hint(str(masks_root))}."
            )
        return [per_class[w] for w in WNIDS]

    def _pairs(self, imagenet: Path, masks_root: Path, split: str) -> list[list[tuple[str, str]]]:
        """Per class, ``(image path, mask path)`` for every mask of ``split``, matched to its ImageNet image."""
        out = []
        missing: list[str] = []
        for wnid, masks in zip(WNIDS, self._masks(masks_root, split), strict=True):
            images = _imagefolder.list_images(imagenet / split / wnid)
            by_name = {p.name: p for p in images}
            by_stem = {p.stem: p for p in images}
            pairs = []
            for mask_path, image_name in masks:
                image = by_name.get(image_name) or by_stem.get(Path(image_name).stem)
                if image is None:
                    missing.append(f"{imagenet / split / wnid / image_name}")
                else:
                    pairs.append((str(image), mask_path))
            out.append(pairs)
        if missing:
            sorted_val = " (validation images must be sorted into class folders)" if split == "val" else ""
            raise DataError(
                f"hard-imagenet: {len(missing)} masked images are missing from ImageNet {split}{sorted_val}, e.g. "
                f"{missing[0]}; {_imagefolder.imagenet_hint(str(imagenet))}."
            )
        return out

    def _files(self) -> dict[str, Any]:
        o = self.options
        imagenet = _imagefolder.find_imagenet_root(self.data_root, o.imagenet_root, "hard-imagenet")
        if not (imagenet / "val").is_dir():
            raise DataError(
                f"hard-imagenet: {imagenet} has no val/ folder (the test images); "
                f"{_imagefolder.imagenet_hint(str(imagenet))}."
            )
        masks_root = self._masks_root()
        test = self._pairs(imagenet, masks_root, "val")
        if o.train_images == "masked":
            train = [[img for img, _ in pairs] for pairs in self._pairs(imagenet, masks_root, "train")]
        else:
            train = [
                [str(p) for p in files]
                for files in _imagefolder.list_class_folders(
                    imagenet / "train", WNIDS, dataset="hard-imagenet", hint=_imagefolder.imagenet_hint(str(imagenet))
                )
            ]
        return {"imagenet": imagenet, "masks": masks_root, "train": train, "test": test}

    def _subsample(
        self, per_class: list[list[Any]], size: int | None, stream: int, what: str
    ) -> tuple[list, np.ndarray]:
        flat = [item for items in per_class for item in items]
        labels = np.repeat(np.arange(len(per_class)), [len(items) for items in per_class])
        idx = stratified_pick(labels, size, np.random.default_rng([self.options.seed, stream]),
                              what=f"hard-imagenet option {what}")
        return [flat[i] for i in idx], labels[idx]

    # ------------------------------------------------------------------ Dataset API

    def load(self) -> DatasetBundle:
        import torch

        from harness.imageset import ImageSet

        o = self.options
        files = self._files()
        train_items, train_labels = self._subsample(files["train"], o.train_size, _STREAM_TRAIN_SUBSET, "train_size")
        test_items, test_labels = self._subsample(files["test"], o.test_size, _STREAM_TEST_SUBSET, "test_size")
        hint = _imagefolder.imagenet_hint(str(files["imagenet"]))
        common = dict(name="hard-imagenet", size=o.resolution, crop=o.crop, cache_dir=self.cache_dir,
                      workers=o.workers, use_cache=o.cache, hint=hint)
        train_dec = _imagefolder.load_images([(p, None) for p in train_items], role="train", **common)
        # the test images are few (≤ 750) and the ablations edit them: always in memory
        test_dec = _imagefolder.load_images(test_items, role="test", with_masks=True, in_memory=True, **common)
        assert test_dec.masks is not None

        def imageset(images: torch.Tensor, labels: np.ndarray) -> ImageSet:
            y = torch.from_numpy(labels.astype(np.int64))
            return ImageSet.create(images, y, torch.zeros_like(y), origin=0)

        train = imageset(train_dec.images, train_labels)
        test = imageset(test_dec.images, test_labels)
        ablated, stats = ablate(test_dec.images, test_dec.masks, tuple(o.variants))
        variants = {name: imageset(images, test_labels) for name, images in ablated.items()}

        digest = hashlib.sha256()
        for root, items in ((files["imagenet"], train_items), (files["imagenet"], [p for p, _ in test_items]),
                            (files["masks"], [m for _, m in test_items])):
            for p in items:
                digest.update(f"{os.path.relpath(p, root)}\0{os.path.getsize(p)}\n".encode())
        info = {
            "source": "hard-imagenet",
            "imagenet_root": str(files["imagenet"]),
            "masks_root": str(files["masks"]),
            "sha256": digest.hexdigest(),
            "sha256_of": "relative path and byte size of every image and test mask file used, in order",
            "num_images": len(train) + len(test),
            "num_train": len(train),
            "num_test": len(test),
            "train_images": o.train_images,
            "split": "train: ImageNet train (release train/ masks unless train_images=all); test: ImageNet val "
                     "images with release val/ masks",
            "wnids": list(WNIDS),
            "imagenet_indices": [c[1] for c in CLASSES],
            "resolution": o.resolution,
            "crop": o.crop,
            "gray": GRAY,
            "mask_stats": stats,
            "decoded_sha256": train.sha256(),
            "decoded_test_sha256": test.sha256(),
            "cache": {"train": train_dec.cache, "test": test_dec.cache},
        }
        return DatasetBundle(
            train=train,
            test=test,
            class_names=CLASS_NAMES,
            subgroup_names=("all",),
            subgroup_scope="global",
            variants=variants,
            source=info,
        )

    def check(self) -> str:
        o = self.options
        files = self._files()
        n_train = sum(len(v) for v in files["train"])
        n_test = sum(len(v) for v in files["test"])
        for what, size, available in (("train_size", o.train_size, n_train), ("test_size", o.test_size, n_test)):
            check_size(size, available, what=f"hard-imagenet option {what}")
        return (
            f"Hard ImageNet (ImageNet at {files['imagenet']}, masks at {files['masks']}): "
            f"{o.train_size or n_train} train / {o.test_size or n_test} test images, 15 classes, "
            f"variants {', '.join(o.variants)}"
        )
