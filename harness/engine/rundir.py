"""Atomic file I/O for the run directory: a file either exists whole or not at all.

Every write goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX). A work unit writes its ``result.json`` last, so its presence marks the
unit as done; a unit killed half-way leaves no ``result.json`` and is simply run again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda p: p.write_bytes(data))


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_tensors(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _atomic_write(path, lambda p: save_file(flat, str(p), metadata=dict(metadata or {})))


def load_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def map_tensors(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file, memory-mapped read-only-in-effect (copy-on-write): pages are read from
    disk when touched, so a file larger than RAM can be used. Only uint8 and int64 tensors (what image shards
    hold) are mapped.

    :raises ValueError: the file is not a complete safetensors file of such tensors.
    """
    import json
    import struct

    import numpy as np
    import torch

    dtypes = {"U8": np.uint8, "I64": np.int64}
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(f"{path}: truncated header")
        header = json.loads(f.read(length))
    base = 8 + length
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in dtypes:
            raise ValueError(f"{path}: {name} has dtype {info.get('dtype')}; only U8 and I64 can be mapped")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        dtype = np.dtype(dtypes[info["dtype"]])
        if end - begin != int(np.prod(shape)) * dtype.itemsize or base + end > size:
            raise ValueError(f"{path}: {name} is truncated or its offsets are inconsistent")
        if end == begin:
            out[name] = torch.from_numpy(np.zeros(shape, dtype=dtype))
            continue
        array = np.memmap(path, dtype=dtype, mode="c", offset=base + begin, shape=shape)
        out[name] = torch.from_numpy(array)
    return out
