"""What the face datasets (``celeba``, ``fairface``) share: their image options, attribute intersections as
subgroups, and a split's JPEGs decoded through the shard cache of :mod:`plugins.datasets._imagefolder`."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from harness.errors import DataError
from harness.interfaces import Dataset
from harness.interfaces import Options as BaseOptions
from plugins.datasets import _imagefolder
from plugins.datasets._common import stratified_pick

if TYPE_CHECKING:  # pragma: no cover
    from harness.imageset import ImageSet


class FaceOptions(BaseOptions):
    """Image and subset options of the face datasets."""

    resolution: int = Field(64, ge=8, le=512, description="Working side in pixels (64 trains on a CPU).")
    crop: float = Field(1.0, gt=0.0, le=1.0, description="Centre square kept, as a fraction of the short side.")
    train_size: int | None = Field(
        None, ge=1, description="Subsample of the train set, stratified by (class, subgroup) (decoded images only)."
    )
    test_size: int | None = Field(None, ge=1, description="Subsample of the test set, stratified by (class, subgroup).")
    seed: int = Field(0, ge=0, description="Seed of the subsampling RNG.")
    workers: int | None = Field(None, ge=1, description="JPEG decoding processes (default: min(8, CPUs)).")
    cache: bool = Field(True, description="Cache decoded images as shards under the cache directory.")

    @field_validator("group", mode="before", check_fields=False)
    @classmethod
    def _group_tuple(cls, value: Any) -> Any:
        """``group`` may be one name or a list of names (their intersection)."""
        if isinstance(value, str):
            return (value,)
        return tuple(value) if isinstance(value, list) else value


def intersect(codes: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """The index of each image's cell in the product of the attributes (the first attribute varies slowest)."""
    out = np.zeros(np.asarray(codes[0]).shape, dtype=np.int64)
    for code, size in zip(codes, sizes, strict=True):
        out = out * size + np.asarray(code, dtype=np.int64)
    return out


def intersect_names(names: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Names of the cells of :func:`intersect`, in its order: ``("female, young", "female, not young", …)``."""
    return tuple(", ".join(parts) for parts in itertools.product(*names))


def missing_files(folder: Path, names: Sequence[str]) -> list[str]:
    """The entries of ``names`` (paths relative to ``folder``) that are not files, found by listing each folder
    they name once."""
    by_dir: dict[str, list[str]] = {}
    for name in names:
        head, _, tail = name.rpartition("/")
        by_dir.setdefault(head, []).append(tail)
    missing = []
    for head, tails in by_dir.items():
        try:
            with os.scandir(folder / head) as it:
                present = np.array([e.name for e in it if e.is_file()])
        except (FileNotFoundError, NotADirectoryError):
            present = np.array([], dtype=str)
        wanted = np.array(tails)
        gone = wanted[~np.isin(wanted, present)] if present.size else wanted
        missing += [f"{head}/{t}" if head else str(t) for t in gone]
    return missing


def pick(labels: np.ndarray, groups: np.ndarray, num_groups: int, size: int | None, seed: int, stream: int,
         what: str) -> np.ndarray:
    """Sorted indices of a ``size``-subset keeping each (class, subgroup) cell's share, or all (``None``).

    :raises ConfigError: more images asked for than there are.
    """
    return stratified_pick(labels * num_groups + groups, size, np.random.default_rng([seed, stream]), what=what)


def decode_split(paths: Sequence[str], labels: np.ndarray, groups: np.ndarray, *, dataset: str, role: str,
                 options: FaceOptions, cache_dir: Path | None, hint: str) -> tuple[ImageSet, dict[str, Any]]:
    """The split's images decoded (centre ``crop``, ``resolution``², RGB) through the shard cache, as an
    :class:`~harness.imageset.ImageSet`, and what the cache did.

    :raises DataError: naming the first JPEG that cannot be decoded.
    """
    import torch

    from harness.imageset import ImageSet

    decoded = _imagefolder.load_images([(str(p), None) for p in paths], name=dataset, role=role,
                                       size=options.resolution, crop=options.crop, cache_dir=cache_dir,
                                       workers=options.workers, use_cache=options.cache, hint=hint)
    images = ImageSet.create(decoded.images, torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                             torch.from_numpy(np.asarray(groups, dtype=np.int64)))
    return images, decoded.cache


def files_digest(paths: Sequence[str], root: Path, texts: Sequence[bytes] = ()) -> str:
    """sha256 of ``texts`` (annotation files' bytes) and of the relative path and byte size of every image."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text).digest())
    for p in paths:
        digest.update(f"{os.path.relpath(p, root)}\0{os.path.getsize(p)}\n".encode())
    return digest.hexdigest()


def one_line(text: str) -> str:
    """``text`` on one line (an error from a parser can span several)."""
    return " ".join(str(text).split())


def check_readable(path: Path, dataset: str, hint: str) -> bytes:
    """The bytes of ``path``.

    :raises DataError: missing or unreadable, with ``hint``.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{dataset}: {path} not found; {hint}.") from None
    except OSError as exc:
        raise DataError(f"{dataset}: cannot read {path} ({exc.strerror or exc}); {hint}.") from None


class FaceDataset(Dataset):
    """What CelebA and FairFace share: their release folder found under ``--data-root``, and one sentence saying
    what to get and where to put it when it is not there."""

    #: The dataset's registry name, for messages.
    dataset_name: ClassVar[str]
    #: The file, relative to the data root, whose absence says the release is not there.
    marker: ClassVar[str]

    @staticmethod
    def find_dir(root: Path) -> Path | None:
        """The release folder under ``root``, or None."""
        raise NotImplementedError

    @staticmethod
    def download_hint(where: Path | str = "DIR") -> str:
        """How to get the files and where to put them."""
        raise NotImplementedError

    def _folder(self) -> Path:
        if self.data_root is None:
            raise DataError(f"{self.dataset_name} needs its files but no --data-root was given; "
                            f"{self.download_hint()}.")
        root = Path(self.data_root).expanduser()
        folder = self.find_dir(root)
        if folder is None:
            raise DataError(f"{self.dataset_name}: no {root / self.marker}; {self.download_hint(root)}.")
        return folder

    def _hint(self) -> str:
        return self.download_hint(Path(self.data_root).expanduser() if self.data_root is not None else "DIR")
