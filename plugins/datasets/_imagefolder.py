"""ImageNet-style folders: listing, decoding JPEGs once (in worker processes) and a shard cache.

Shared by ``hard-imagenet`` and ``breeds``. ImageNet-scale data never has to pass through memory as JPEGs or
PIL objects: images are decoded in parallel worker processes (:func:`decode_all`), resized and centre-cropped to
the working resolution, and written
as uint8 tensor shards (safetensors) under the dataset's cache directory. A later load with the same inputs reads
the shards and touches no JPEG.

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
from collections.abc import Sequence
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
#: Images per shard file.
SHARD_SIZE = 4096
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


def stratified_pick(cells: np.ndarray, size: int | None, rng: np.random.Generator, *, what: str) -> np.ndarray:
    """Sorted indices of a ``size``-subset keeping each cell's share (exact quotas), or all indices."""
    from harness.errors import ConfigError
    from plugins.datasets.colored_mnist import stratified_subset

    if size is None:
        return np.arange(cells.size)
    if size > cells.size:
        raise ConfigError(f"{what}={size} exceeds the {cells.size} images available")
    return stratified_subset(cells, size, rng)


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
    """Decoded images (uint8 ``N×3×S×S``), masks (uint8 ``N×1×S×S`` of 0/1, or ``None``) and what the cache did."""

    images: torch.Tensor
    masks: torch.Tensor | None
    cache: dict[str, Any] = field(default_factory=dict)


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


def _read_cache(directory: Path, key: str, n: int, size: int, with_masks: bool) -> Decoded | None:
    """The cached tensors, or ``None`` when the directory is absent, incomplete or unreadable."""
    import torch
    from safetensors import safe_open

    index_path = directory / "index.json"
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        if (index.get("version"), index.get("key"), index.get("count"), index.get("size")) != (
            CACHE_VERSION, key, n, size
        ):
            return None
        images = torch.empty((n, 3, size, size), dtype=torch.uint8)
        masks = torch.empty((n, 1, size, size), dtype=torch.uint8) if with_masks else None
        filled = 0
        for shard in index["shards"]:
            start, count = int(shard["start"]), int(shard["count"])
            if start != filled:
                return None
            with safe_open(str(directory / shard["file"]), framework="pt") as f:
                part = f.get_tensor("images")
                if tuple(part.shape) != (count, 3, size, size) or part.dtype != torch.uint8:
                    return None
                images[start : start + count] = part
                if masks is not None:
                    mpart = f.get_tensor("masks")
                    if tuple(mpart.shape) != (count, 1, size, size):
                        return None
                    masks[start : start + count] = mpart
            filled += count
        if filled != n:
            return None
    except Exception:  # noqa: BLE001 - any unreadable cache (safetensors raises its own type) is rebuilt
        return None
    return Decoded(images, masks)


def _index_ok(directory: Path, key: str, n: int) -> bool:
    try:
        index = json.loads((directory / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return index.get("version") == CACHE_VERSION and index.get("key") == key and index.get("count") == n


def _write_cache(
    directory: Path, images: torch.Tensor, masks: torch.Tensor | None, key: str, *, broken: bool = False
) -> bool:
    """Write the shards under a temporary name, then rename. Returns False when the cache is not writable.

    ``broken``: ``directory`` existed but could not be read, so it is replaced; otherwise a directory that appeared
    meanwhile was written by another process for the same key, and is kept.
    """
    from safetensors.torch import save_file

    n, _, size, _ = images.shape
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    except OSError:
        return False
    try:
        shards = []
        for k, start in enumerate(range(0, n, SHARD_SIZE)):
            stop = min(n, start + SHARD_SIZE)
            tensors = {"images": images[start:stop].contiguous()}
            if masks is not None:
                tensors["masks"] = masks[start:stop].contiguous()
            name = f"shard-{k:05d}.safetensors"
            save_file(tensors, str(tmp / name))
            shards.append({"file": name, "start": start, "count": stop - start})
        index = {"version": CACHE_VERSION, "key": key, "count": int(n), "size": int(size), "shards": shards,
                 "masks": masks is not None}
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        if directory.exists():
            if not broken and _index_ok(directory, key, int(n)):  # another process finished the same cache meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return True
            trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
            os.replace(directory, trash / "old")  # move the broken cache aside first: readers never see half of it
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, directory)
        return True
    except Exception:  # noqa: BLE001 - a full or read-only disk must not fail the run: the data is in memory
        shutil.rmtree(tmp, ignore_errors=True)
        return directory.is_dir()  # another process may have won the race


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


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
    """Decode every item, in parallel worker processes for large sets.

    :raises DataError: naming the first file that cannot be decoded.
    """
    import torch

    n = len(items)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    masks = torch.empty((n, 1, size, size), dtype=torch.uint8) if with_masks else None
    workers = default_workers() if workers is None else workers
    chunks = [(s, items[s : s + CHUNK_SIZE]) for s in range(0, n, CHUNK_SIZE)]

    def store(start: int, result: tuple[np.ndarray, np.ndarray | None, tuple[str, str] | None]) -> None:
        imgs, msks, error = result
        if error is not None:
            raise DataError(
                f"{dataset}: cannot decode {error[0]} ({error[1]}): the file is damaged; replace it with an intact "
                f"copy ({hint})."
            )
        images[start : start + len(imgs)] = torch.from_numpy(imgs)
        if masks is not None and msks is not None:
            masks[start : start + len(msks)] = torch.from_numpy(msks)

    done = 0  # chunks stored, in order
    if workers > 1 and n >= PARALLEL_MIN:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_mp_context()) as pool:
            futures = [pool.submit(_decode_chunk, chunk, size, crop, with_masks) for _, chunk in chunks]
            try:
                for (start, _), future in zip(chunks, futures, strict=True):
                    store(start, future.result())
                    done += 1
            except BrokenProcessPool:
                pass  # a worker died (killed, or the main module cannot be re-imported): finish in this process
            finally:
                for future in futures:
                    future.cancel()
    for start, chunk in chunks[done:]:
        store(start, _decode_chunk(chunk, size, crop, with_masks))
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
    hint: str,
) -> Decoded:
    """Decoded images (and masks) for ``items`` = ``[(image path, mask path or None), ...]``, in that order.

    With a cache directory, the first call decodes and writes shards; later calls with the same inputs read the
    shards only. ``cache`` in the result records ``{"dir", "key", "hit"}`` (``None`` values without a cache).

    :raises DataError: a file is missing or cannot be decoded.
    """
    params = {"size": size, "crop": crop, "masks": with_masks, "resample": "bilinear", "draft": True}
    if cache_dir is None or not use_cache:
        imgs, msks = decode_all(items, size=size, crop=crop, with_masks=with_masks, workers=workers, dataset=name,
                                hint=hint)
        return Decoded(imgs, msks, {"dir": None, "key": None, "hit": False})
    key = cache_key(name, role, params, items, dataset=name, hint=hint)
    directory = Path(cache_dir) / name / f"{role}-{key[:20]}"
    existed = directory.exists()
    cached = _read_cache(directory, key, len(items), size, with_masks)
    if cached is not None:
        cached.cache = {"dir": str(directory), "key": key, "hit": True}
        return cached
    imgs, msks = decode_all(items, size=size, crop=crop, with_masks=with_masks, workers=workers, dataset=name,
                            hint=hint)
    written = _write_cache(directory, imgs, msks, key, broken=existed)
    return Decoded(imgs, msks, {"dir": str(directory) if written else None, "key": key, "hit": False})
