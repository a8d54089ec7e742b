"""ImageNet-style folders: listing, decoding JPEGs once (in worker processes) and a shard cache.

Shared by ``hard-imagenet`` and ``breeds``. ImageNet-scale data never has to pass through memory as JPEGs or
PIL objects: images are decoded in parallel worker processes (:func:`decode_all`), resized and centre-cropped to
the working resolution, and written
as uint8 tensor shards (safetensors) under the dataset's cache directory. A later load with the same inputs reads
the shards and touches no JPEG. Decoding streams into the shards (a bounded number of chunks and one shard in
memory), and a set larger than ``$BENCH_IN_MEMORY_GB`` (default 4 GiB) is then read from the shards through
memory maps (:class:`harness.imageset.LazyImages`) instead of RAM: BREEDS entity13 at 224 px (~50 GB) trains
from disk, with the OS page cache holding what fits.

Decoding (:func:`decode_image`), the same for every image (and, for masks, :func:`decode_mask`):

- JPEG DCT scaling (``PIL.Image.draft``) first, never below the target resolution, so large JPEGs decode fast;
- the centre square of side ``crop × min(width, height)`` (``crop = 0.875 = 224/256``, the usual ImageNet
  evaluation crop: resize the short side to ``size / 0.875`` and centre-crop ``size``), resampled straight to
  ``size × size`` with PIL's bilinear filter (antialiased when shrinking), in RGB (grey, CMYK and palette images
  are converted).

Cache key: sha256 of (format version, dataset name, role, decoding parameters, and every input file's absolute
path, byte size and modification time, in order). Changing any file, the subset of files, the resolution or the
crop gives a new key; the old directory is left in place (delete ``<cache_dir>`` to reclaim the space).
Layout: ``<cache_dir>/<dataset>/<role>-<key[:20]>/{index.json, shard-00000.safetensors, ...}`` with
``images`` (uint8 ``n×3×S×S``) and, where masks were decoded, ``masks`` (uint8 ``n×1×S×S`` of 0/1) per shard.
A cache directory is written under a temporary name and renamed when complete, so a killed run never leaves a
half-written cache; an unreadable cache is rebuilt.

This module imports no torch at import time (worker processes only need numpy and PIL).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Bump when decoding changes: old caches then miss instead of returning stale pixels.
CACHE_VERSION = 1
#: Fraction of the short side kept by the centre crop (224/256, the standard ImageNet evaluation transform).
DEFAULT_CROP = 0.875
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
#: Images per shard file (at most; see :func:`shard_rows`).
SHARD_SIZE = 4096
#: Target bytes per shard file.
SHARD_BYTES = 256 * 2**20
#: Environment variable: GiB of decoded images kept in RAM before sets are memory-mapped instead.
ENV_IN_MEMORY = "BENCH_IN_MEMORY_GB"
DEFAULT_IN_MEMORY_GB = 4.0
#: Images per task sent to a worker process.
CHUNK_SIZE = 128
#: Below this many images, decoding runs in this process (starting workers costs more than it saves).
PARALLEL_MIN = 512
#: Grey level of "gray 0.5" on the uint8 scale (0.5 × 255 = 127.5, rounded half to even as torch.round does).
GRAY = 128


def imagenet_hint(where: str = "DIR") -> str:
    """The how-to-get-it clause for ImageNet images (they cannot be downloaded automatically)."""
    return (
        "ImageNet (ILSVRC2012) cannot be downloaded automatically: get it from https://image-net.org/download "
        f"(an account is needed) and extract it so that {where}/train/<wnid>/*.JPEG and {where}/val/<wnid>/*.JPEG "
        "exist (validation images sorted into class folders, e.g. with the usual valprep.sh), then pass "
        "--data-root with an imagenet/ folder inside, or the dataset option imagenet_root"
    )


def find_imagenet_root(data_root: Path | None, explicit: str | None, dataset: str) -> Path:
    """The ImageNet folder: the option ``imagenet_root`` if given, else ``<data_root>/imagenet``, else
    ``<data_root>`` itself when it holds ``train/``.

    :raises DataError: nothing usable, with how to get ImageNet.
    """
    if explicit:
        root = Path(explicit).expanduser()
        if not (root / "train").is_dir():
            raise DataError(f"{dataset}: imagenet_root {root} has no train/ folder; {imagenet_hint(str(root))}.")
        return root
    if data_root is None:
        raise DataError(f"{dataset} needs ImageNet images but no --data-root was given; {imagenet_hint()}.")
    data_root = Path(data_root).expanduser()
    for candidate in (data_root / "imagenet", data_root):
        if (candidate / "train").is_dir():
            return candidate
    raise DataError(
        f"{dataset}: no ImageNet under {data_root} (looked for {data_root / 'imagenet' / 'train'}); "
        f"{imagenet_hint(str(data_root / 'imagenet'))}."
    )


def list_images(folder: Path) -> list[Path]:
    """Image files (``.JPEG``/``.jpg``/``.png``, any case) directly in ``folder``, sorted by name; ``[]`` if the
    folder does not exist."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in sorted(names)]


def list_class_folders(split_dir: Path, wnids: Sequence[str], *, dataset: str, hint: str) -> list[list[Path]]:
    """The images of each wnid under ``split_dir/<wnid>/``.

    :raises DataError: when any wnid folder is missing or empty (never a silent partial set).
    """
    files = [list_images(split_dir / w) for w in wnids]
    missing = [w for w, f in zip(wnids, files, strict=True) if not f]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{dataset}: {len(missing)} of {len(wnids)} class folders are missing or empty under {split_dir} "
            f"({shown}); {hint}."
        )
    return files


# --------------------------------------------------------------------------------------------------- decoding


def crop_box(width: int, height: int, crop: float) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of the centred square of side ``crop × min(width, height)``."""
    side = crop * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def decode_image(path: str | Path, size: int, crop: float = DEFAULT_CROP) -> tuple[np.ndarray, tuple[int, int]]:
    """One image → uint8 ``3×size×size`` (see the module docstring), plus its original ``(width, height)``.

    :raises OSError, ValueError: when PIL cannot decode it (the caller turns that into a DataError).
    """
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        short = min(width, height)
        target = size / crop  # short side before the crop, in output pixels
        scale = target / short
        if scale < 1:  # JPEG DCT scaling; PIL keeps the drafted image at least this large
            im.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        fx, fy = im.size[0] / width, im.size[1] / height
        left, top, right, bottom = crop_box(width, height, crop)
        rgb = im.convert("RGB")
        out = rgb.resize((size, size), Image.Resampling.BILINEAR, box=(left * fx, top * fy, right * fx, bottom * fy))
        array = np.asarray(out, dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1)), (width, height)


def decode_mask(path: str | Path, size: int, image_size: tuple[int, int], crop: float = DEFAULT_CROP) -> np.ndarray:
    """A segmentation mask → uint8 ``1×size×size`` of 0/1, aligned with :func:`decode_image` of its image.

    Any non-zero pixel is object (as in the Hard ImageNet release's loader). A mask whose size differs from its
    image's is first stretched to it (nearest neighbour). The binary mask is resampled with the image's exact
    geometry (bilinear) and thresholded at one half, so the object keeps its area at the working resolution.
    """
    from PIL import Image

    with Image.open(path) as im:
        gray = np.asarray(im.convert("L"), dtype=np.uint8)
    binary = Image.fromarray(np.where(gray > 0, 255, 0).astype(np.uint8), mode="L")
    if binary.size != tuple(image_size):
        binary = binary.resize(tuple(image_size), Image.Resampling.NEAREST)
    small = binary.resize((size, size), Image.Resampling.BILINEAR, box=crop_box(*image_size, crop))
    return (np.asarray(small, dtype=np.uint8) >= 128).astype(np.uint8)[None]


def _decode_chunk(
    items: Sequence[tuple[str, str | None]], size: int, crop: float, with_masks: bool
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, str] | None]:
    """Decode a run of ``(image, mask)`` paths; on the first failure return ``(…, (path, reason))``."""
    images = np.empty((len(items), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(items), 1, size, size), dtype=np.uint8) if with_masks else None
    for i, (image_path, mask_path) in enumerate(items):
        current = image_path
        try:
            images[i], wh = decode_image(image_path, size, crop)
            if masks is not None:
                current = mask_path or ""
                if mask_path is None:
                    masks[i] = 0
                else:
                    masks[i] = decode_mask(mask_path, size, wh, crop)
        except Exception as exc:  # PIL raises many types for damaged files
            return images, masks, (current, f"{type(exc).__name__}: {exc}")
    return images, masks, None


# --------------------------------------------------------------------------------------------------- cache


@dataclass
class Decoded:
    """Decoded images (uint8 ``N×3×S×S``), masks (uint8 ``N×1×S×S`` of 0/1, or ``None``) and what the cache did.

    ``images`` and ``masks`` are in-memory tensors, or :class:`harness.imageset.LazyImages` over the
    memory-mapped cache shards when the set is larger than :func:`in_memory_limit` (see :func:`load_images`).
    """

    images: Any
    masks: Any
    cache: dict[str, Any] = field(default_factory=dict)


def in_memory_limit() -> int:
    """Bytes of decoded images a set may take before it is read from memory-mapped shards instead of RAM:
    ``$BENCH_IN_MEMORY_GB`` (GiB, default 4)."""
    raw = os.environ.get(ENV_IN_MEMORY, "")
    try:
        gb = float(raw) if raw.strip() else DEFAULT_IN_MEMORY_GB
    except ValueError:
        raise DataError(f"{ENV_IN_MEMORY}={raw!r} is not a number of GiB (e.g. {ENV_IN_MEMORY}=8)") from None
    return int(gb * 2**30)


def shard_rows(size: int) -> int:
    """Images per shard: :data:`SHARD_SIZE`, fewer for large images (a shard stays near 256 MiB)."""
    return max(1, min(SHARD_SIZE, SHARD_BYTES // (3 * size * size)))


def cache_key(
    name: str, role: str, params: dict[str, Any], items: Sequence[tuple[str, str | None]], *, dataset: str, hint: str
) -> str:
    """sha256 over the format version, names, decoding parameters and each file's path, size and mtime."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "name": name, "role": role, "params": params}, sort_keys=True).encode())
    for pair in items:
        for path in pair:
            if path is None:
                h.update(b"-\n")
                continue
            try:
                st = os.stat(path)
            except OSError:
                raise DataError(f"{dataset}: {path} disappeared while loading; {hint}.") from None
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_cache(directory: Path, key: str, n: int, size: int, with_masks: bool, in_memory: bool = True
                ) -> Decoded | None:
    """The cached images (and masks), or ``None`` when the directory is absent, incomplete or unreadable.

    ``in_memory``: copy the shards into one tensor; otherwise map them (:class:`~harness.imageset.LazyImages`).
    """
    import torch

    from harness.imageset import LazyImages
    from harness.engine.rundir import map_tensors

    index_path = directory / "index.json"
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        if (index.get("version"), index.get("key"), index.get("count"), index.get("size")) != (
            CACHE_VERSION, key, n, size
        ):
            return None
        image_parts, mask_parts = [], []
        filled = 0
        for shard in index["shards"]:
            start, count = int(shard["start"]), int(shard["count"])
            if start != filled:
                return None
            part = map_tensors(directory / shard["file"])  # checks that every tensor's bytes are on disk
            if tuple(part["images"].shape) != (count, 3, size, size) or part["images"].dtype != torch.uint8:
                return None
            image_parts.append(part["images"])
            if with_masks:
                if tuple(part["masks"].shape) != (count, 1, size, size):
                    return None
                mask_parts.append(part["masks"])
            filled += count
        if filled != n or not image_parts:
            return None
        if in_memory:
            images = torch.cat(image_parts)  # reads the mapped pages once; the maps are then dropped
            masks = torch.cat(mask_parts) if with_masks else None
        else:
            images = LazyImages(image_parts)
            masks = LazyImages(mask_parts) if with_masks else None
    except Exception:  # noqa: BLE001 - any unreadable cache (truncated, bad JSON, missing key) is rebuilt
        return None
    return Decoded(images, masks)


def _index_ok(directory: Path, key: str, n: int) -> bool:
    try:
        index = json.loads((directory / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return index.get("version") == CACHE_VERSION and index.get("key") == key and index.get("count") == n


class _CacheWriteError(Exception):
    """Writing a shard failed (disk full, removed directory): the partial cache was removed."""


def _write_shards(
    directory: Path, chunks: Iterator[tuple[int, np.ndarray, np.ndarray | None]], *, n: int, size: int,
    with_masks: bool, key: str, broken: bool = False,
) -> bool:
    """Stream decoded chunks into shards under a temporary name, then rename: at most one shard is in memory.

    Returns False (having consumed nothing) when the cache directory cannot be created. Errors of ``chunks``
    (a damaged JPEG) propagate after the temporary directory is removed; a failure to write raises
    :class:`_CacheWriteError`.

    ``broken``: ``directory`` existed but could not be read, so it is replaced; otherwise a directory that appeared
    meanwhile was written by another process for the same key, and is kept.
    """
    import torch
    from safetensors.torch import save_file

    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    except OSError:
        return False
    rows = shard_rows(size)
    shards: list[dict[str, Any]] = []
    buf = np.empty((min(rows, max(n, 1)), 3, size, size), dtype=np.uint8)
    mbuf = np.empty((len(buf), 1, size, size), dtype=np.uint8) if with_masks else None
    fill = 0

    def flush() -> None:
        nonlocal fill
        if not fill:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {"images": torch.from_numpy(buf[:fill])}
        if mbuf is not None:
            tensors["masks"] = torch.from_numpy(mbuf[:fill])
        try:
            save_file(tensors, str(tmp / name))
        except Exception as exc:
            raise _CacheWriteError(str(exc)) from exc
        start = shards[-1]["start"] + shards[-1]["count"] if shards else 0
        shards.append({"file": name, "start": start, "count": fill})
        fill = 0

    try:
        for _, imgs, msks in chunks:
            pos = 0
            while pos < len(imgs):
                take = min(len(imgs) - pos, len(buf) - fill)
                buf[fill : fill + take] = imgs[pos : pos + take]
                if mbuf is not None:
                    mbuf[fill : fill + take] = 0 if msks is None else msks[pos : pos + take]
                fill += take
                pos += take
                if fill == len(buf):
                    flush()
        flush()
        index = {"version": CACHE_VERSION, "key": key, "count": int(n), "size": int(size), "shards": shards,
                 "masks": with_masks}
        try:
            (tmp / "index.json").write_text(json.dumps(index, indent=1))
        except OSError as exc:
            raise _CacheWriteError(str(exc)) from exc
        if directory.exists():
            if not broken and _index_ok(directory, key, int(n)):  # another process finished the same cache meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return True
            trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
            os.replace(directory, trash / "old")  # move the broken cache aside first: readers never see half of it
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, directory)
        return True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tensor_chunks(images: torch.Tensor, masks: torch.Tensor | None
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    for start in range(0, len(images), CHUNK_SIZE):
        stop = start + CHUNK_SIZE
        yield start, images[start:stop].numpy(), None if masks is None else masks[start:stop].numpy()


def _write_cache(
    directory: Path, images: torch.Tensor, masks: torch.Tensor | None, key: str, *, broken: bool = False
) -> bool:
    """Write in-memory tensors as a cache (see :func:`_write_shards`); False when the cache is not writable."""
    n, _, size, _ = images.shape
    try:
        return _write_shards(directory, _tensor_chunks(images, masks), n=n, size=size, with_masks=masks is not None,
                             key=key, broken=broken)
    except _CacheWriteError:
        return directory.is_dir()  # another process may have won the race


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def iter_decoded(
    items: Sequence[tuple[str, str | None]],
    *,
    size: int,
    crop: float = DEFAULT_CROP,
    with_masks: bool = False,
    workers: int | None = None,
    dataset: str,
    hint: str,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(start, images, masks)`` chunks of decoded items, in order, from worker processes for large sets.

    At most ``2 × workers`` chunks are in flight, so memory stays bounded whatever the number of images. A worker
    that dies (OOM killer, or a main module that cannot be re-imported) is replaced by decoding in this process.

    :raises DataError: naming the first file that cannot be decoded.
    """
    n = len(items)
    workers = default_workers() if workers is None else workers
    chunks = [(s, items[s : s + CHUNK_SIZE]) for s in range(0, n, CHUNK_SIZE)]

    def checked(start: int, result: tuple[np.ndarray, np.ndarray | None, tuple[str, str] | None]):
        imgs, msks, error = result
        if error is not None:
            raise DataError(
                f"{dataset}: cannot decode {error[0]} ({error[1]}): the file is damaged; replace it with an intact "
                f"copy ({hint})."
            )
        return start, imgs, msks

    done = 0  # chunks yielded, in order
    if workers > 1 and n >= PARALLEL_MIN:
        window = 2 * workers
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_mp_context()) as pool:
            futures: dict[int, Any] = {}
            try:
                for k in range(len(chunks)):
                    for j in range(k, min(len(chunks), k + window)):
                        if j not in futures:
                            futures[j] = pool.submit(_decode_chunk, chunks[j][1], size, crop, with_masks)
                    result = futures.pop(k).result()
                    yield checked(chunks[k][0], result)
                    done += 1
            except BrokenProcessPool:
                pass
            finally:
                for future in futures.values():
                    future.cancel()
    for start, chunk in chunks[done:]:
        yield checked(start, _decode_chunk(chunk, size, crop, with_masks))


def decode_all(
    items: Sequence[tuple[str, str | None]],
    *,
    size: int,
    crop: float = DEFAULT_CROP,
    with_masks: bool = False,
    workers: int | None = None,
    dataset: str,
    hint: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every item decoded into in-memory tensors (see :func:`iter_decoded`).

    :raises DataError: naming the first file that cannot be decoded.
    """
    import torch

    n = len(items)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    masks = torch.empty((n, 1, size, size), dtype=torch.uint8) if with_masks else None
    for start, imgs, msks in iter_decoded(items, size=size, crop=crop, with_masks=with_masks, workers=workers,
                                          dataset=dataset, hint=hint):
        images[start : start + len(imgs)] = torch.from_numpy(imgs)
        if masks is not None and msks is not None:
            masks[start : start + len(msks)] = torch.from_numpy(msks)
    return images, masks


def _mp_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux (workers start at once and re-import nothing; they only run PIL and numpy, as torch's
    DataLoader workers do), ``spawn`` elsewhere."""
    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def load_images(
    items: Sequence[tuple[str, str | None]],
    *,
    name: str,
    role: str,
    size: int,
    cache_dir: Path | None,
    crop: float = DEFAULT_CROP,
    with_masks: bool = False,
    workers: int | None = None,
    use_cache: bool = True,
    in_memory: bool | None = None,
    hint: str,
) -> Decoded:
    """Decoded images (and masks) for ``items`` = ``[(image path, mask path or None), ...]``, in that order.

    With a cache directory, the first call decodes into shards on disk, streaming (at most a shard and a few
    chunks in memory), and every call then reads the shards. ``in_memory``: ``True`` copies them into one tensor,
    ``False`` maps them (:class:`~harness.imageset.LazyImages`: ImageNet-scale sets never have to fit in RAM),
    ``None`` maps them when the set is larger than :func:`in_memory_limit`. Without a (writable) cache the images
    are decoded into memory. ``cache`` in the result records ``{"dir", "key", "hit"}`` (``None`` values without a
    cache).

    :raises DataError: a file is missing or cannot be decoded, or the cache cannot be written and the set is too
        large for memory.
    """
    params = {"size": size, "crop": crop, "masks": with_masks, "resample": "bilinear", "draft": True}
    nbytes = len(items) * (3 + int(with_masks)) * size * size
    if in_memory is None:
        in_memory = nbytes <= in_memory_limit()
    decode = dict(size=size, crop=crop, with_masks=with_masks, workers=workers, dataset=name, hint=hint)
    if cache_dir is None or not use_cache:
        imgs, msks = decode_all(items, **decode)
        return Decoded(imgs, msks, {"dir": None, "key": None, "hit": False})
    key = cache_key(name, role, params, items, dataset=name, hint=hint)
    directory = Path(cache_dir) / name / f"{role}-{key[:20]}"
    existed = directory.exists()
    cached = _read_cache(directory, key, len(items), size, with_masks, in_memory)
    if cached is not None:
        cached.cache = {"dir": str(directory), "key": key, "hit": True}
        return cached
    try:
        written = _write_shards(directory, iter_decoded(items, **decode), n=len(items), size=size,
                                with_masks=with_masks, key=key, broken=existed)
    except _CacheWriteError as exc:
        if not in_memory:
            raise DataError(f"{name}: cannot write the image cache under {directory.parent} ({exc}); free "
                            f"{nbytes / 2**30:.1f} GiB there or give another cache directory.") from None
        written = False
    if written:
        cached = _read_cache(directory, key, len(items), size, with_masks, in_memory)
        if cached is not None:
            cached.cache = {"dir": str(directory), "key": key, "hit": False}
            return cached
    imgs, msks = decode_all(items, **decode)  # the cache cannot be written here: decode into memory
    return Decoded(imgs, msks, {"dir": None, "key": key, "hit": False})
