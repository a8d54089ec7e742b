"""Atomic file I/O for the run directory: a file either exists whole or not at all.

Every write goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX). A work unit writes its ``result.json`` last, so its presence marks the
unit as done; a unit killed half-way leaves no ``result.json`` and is simply run again.

A unit's ``result.json`` also carries the unit's integrity (:func:`write_result`): the size and sha256 of every
file the unit wrote, a checksum of the result itself, and the fingerprint of each unit it read. A finished unit is
trusted only when all of it still holds (:func:`unit_problem`); a damaged one is computed again, and so is every
unit that read outputs which have changed since.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.engine.plan import RESULT, Unit
from harness.errors import RunDirError


def _umask() -> int:
    """The process's umask: from ``/proc`` where it can be read, else by setting and restoring it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # the mode open() would give it (mkstemp makes 0600)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it came from) says the disk or the quota is full. Libraries that write
    through their own I/O (safetensors) keep only the OS message, so the message counts too."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(os.strerror(code) in str(cause) for code in (errno.ENOSPC, errno.EDQUOT)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


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


# --------------------------------------------------------------------------------------------------- integrity

#: The key of a unit's ``result.json`` that holds its integrity record.
INTEGRITY = "integrity"
#: A unit's scratch folder (``Runtime.workdir``): never read by another unit, so not part of its outputs.
SCRATCH = "work"
_CHUNK = 1 << 22


class DamagedUnitError(RunDirError):
    """A unit's output is missing, truncated or altered since the unit wrote it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"unit {key}: {problem}; run the same command again to compute it anew")
        self.key = key
        self.problem = problem


def _stream_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1024)
def _sha256_cached(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    return _stream_sha256(Path(path))


def file_sha256(path: Path) -> str:
    """sha256 of a file (read in blocks), computed once per process while its size, times and inode stay the same."""
    path = Path(path)
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _is_output(rel: Path) -> bool:
    if rel.parts[0] == SCRATCH or rel.as_posix() == RESULT:
        return False
    return not (rel.name.startswith(".") and rel.name.endswith(".tmp"))  # a write killed half-way


def output_files(directory: Path) -> list[str]:
    """The files a unit wrote in ``directory`` (relative POSIX paths, sorted): everything but ``result.json``, the
    scratch folder and leftover temporary files."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = [p.relative_to(directory) for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]
    return sorted(rel.as_posix() for rel in names if _is_output(rel))


def write_result(directory: Path, result: Mapping[str, Any], *, inputs: Mapping[str, str] | None = None) -> None:
    """Write a unit's ``result.json`` last and atomically, with its integrity record: size and sha256 of every
    output file, a checksum of ``result`` and the fingerprints of the units it read (``inputs``)."""
    directory = Path(directory)
    if INTEGRITY in result:
        raise ValueError(f"a unit's result may not use the reserved key {INTEGRITY!r}")
    files = {}
    for name in output_files(directory):
        path = directory / name
        files[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    record = {
        "files": files,
        "inputs": dict(sorted((inputs or {}).items())),
        "result_sha256": hashlib.sha256(_canonical(dict(result))).hexdigest(),
    }
    write_json(directory / RESULT, {**result, INTEGRITY: record})


def _read_record(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(result.json as written, None)`` or ``(None, what is wrong with it)``."""
    path = Path(directory) / RESULT
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, f"{RESULT} is missing"
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"{RESULT} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    except OSError as exc:
        return None, f"{RESULT} cannot be read ({exc.strerror or exc})"
    if not isinstance(data, dict):
        return None, f"{RESULT} is damaged (not a JSON object)"
    record = data.get(INTEGRITY)
    if not (isinstance(record, dict) and isinstance(record.get("files"), dict)
            and isinstance(record.get("inputs"), dict) and isinstance(record.get("result_sha256"), str)):
        return None, f"{RESULT} has no integrity record (damaged, or written by an older bench)"
    body = {k: v for k, v in data.items() if k != INTEGRITY}
    try:
        digest = hashlib.sha256(_canonical(body)).hexdigest()
    except ValueError:
        digest = None
    if digest != record["result_sha256"]:
        return None, f"{RESULT} does not match its checksum (edited or damaged)"
    return data, None


def _file_problem(directory: Path, name: str, expected: Any, contents: bool = True) -> str | None:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not isinstance(expected, dict):
        return f"{RESULT} lists an invalid file entry {name!r}"
    path = Path(directory) / rel
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{name} is missing"
    except OSError as exc:
        return f"{name} cannot be read ({exc.strerror or exc})"
    if size != expected.get("size"):
        return f"{name} has {size} bytes, {expected.get('size')} were written (truncated or replaced)"
    if not contents:
        return None
    try:
        digest = file_sha256(path)
    except OSError as exc:
        return f"{name} cannot be read ({exc.strerror or exc})"
    if digest != expected.get("sha256"):
        return f"{name} does not match its sha256 (damaged)"
    return None


def verify_unit(directory: Path, *, contents: bool = True) -> str | None:
    """What is wrong with the finished unit in ``directory``, in a few words naming the file; ``None`` when its
    ``result.json`` parses, matches its checksum, and every file it lists has the recorded size and sha256.
    ``contents=False`` checks sizes only (no file is read: for a quick look at a large run)."""
    data, problem = _read_record(directory)
    if data is None:
        return problem
    for name, expected in data[INTEGRITY]["files"].items():
        problem = _file_problem(directory, name, expected, contents)
        if problem is not None:
            return problem
    return None


def verify_file(directory: Path, name: str) -> str | None:
    """Like :func:`verify_unit`, for one output file of the unit (the one about to be loaded)."""
    data, problem = _read_record(directory)
    if data is None:
        return problem
    files = data[INTEGRITY]["files"]
    if name not in files:
        return f"{name} is not among the files the unit wrote"
    return _file_problem(directory, name, files[name])


def read_result(directory: Path) -> dict[str, Any]:
    """A finished unit's result without its integrity record. Checks the record, not the output files.

    :raises DamagedUnitError: ``result.json`` is missing or damaged.
    """
    data, problem = _read_record(directory)
    if data is None:
        raise DamagedUnitError(Path(directory).name, problem or "")
    return {k: v for k, v in data.items() if k != INTEGRITY}


def fingerprint(directory: Path) -> str | None:
    """What a unit's outputs are, as its readers saw them: a hash of its files' sha256 and of its own inputs'
    fingerprints (so a change upstream reaches every unit below). ``None`` when ``result.json`` is damaged."""
    data, _ = _read_record(directory)
    if data is None:
        return None
    record = data[INTEGRITY]
    return hashlib.sha256(_canonical({"files": record["files"], "inputs": record["inputs"]})).hexdigest()


# --------------------------------------------------------------------------------------------------- units


def _directory_of(run_dir: Path, key: str) -> Path:
    """The directory of the unit with ``key`` (as :meth:`Unit.directory`)."""
    return Path(run_dir) / key.replace(":", "_")


def unit_inputs(run_dir: Path, u: Unit) -> dict[str, str]:
    """The fingerprints of the units ``u`` reads (its dependencies), to record in ``u``'s result.

    :raises DamagedUnitError: a dependency is not finished or is damaged.
    """
    out = {}
    for key in u.deps:
        fp = fingerprint(_directory_of(run_dir, key))
        if fp is None:
            raise DamagedUnitError(key, f"{RESULT} is missing or damaged, and unit {u.key} reads its outputs")
        out[key] = fp
    return out


def unit_problem(run_dir: Path, u: Unit, *, check_inputs: bool = True, contents: bool = True) -> str | None:
    """What is wrong with unit ``u`` of ``run_dir``, naming the file; ``None``: finished, intact and up to date.

    Up to date: every dependency still has the fingerprint it had when ``u`` read it (a dependency computed anew
    with other outputs makes ``u`` stale).
    """
    directory = u.directory(run_dir)
    problem = verify_unit(directory, contents=contents)
    if problem is not None or not check_inputs:
        return problem
    data, problem = _read_record(directory)
    if data is None:  # changed since verify_unit read it
        return problem
    recorded = data[INTEGRITY]["inputs"]
    if set(recorded) != set(u.deps):
        return f"{RESULT} records the inputs {sorted(recorded)}, the plan has {sorted(u.deps)}"
    for key in u.deps:
        if fingerprint(_directory_of(run_dir, key)) != recorded[key]:
            return f"its input {key} has changed since it was computed"
    return None


def verify_run(run_dir: Path, units: Iterable[Unit], *, contents: bool = True) -> list[tuple[str, str]]:
    """``(unit key, problem)`` for every unit of ``run_dir`` that is damaged or stale, in plan order.

    A unit without ``result.json`` is unfinished, not a problem, unless a unit that reads it is finished (then
    its ``result.json`` was lost). A unit below a listed one is not checked against it (it is checked again once
    the listed one is computed anew). ``contents=False``: sizes only, as :func:`verify_unit`.
    """
    units = list(units)
    finished = {u.key for u in units if (u.directory(run_dir) / RESULT).exists()}
    read_by_finished = {d for u in units if u.key in finished for d in u.deps}
    problems: list[tuple[str, str]] = []
    suspect: set[str] = set()  # damaged, lost, unfinished, or below one of those
    for u in units:
        if u.key not in finished:
            suspect.add(u.key)
            if u.key in read_by_finished:
                problems.append((u.key, f"{RESULT} is missing, but units that read its outputs are finished"))
            continue
        below = any(d in suspect for d in u.deps)
        problem = unit_problem(run_dir, u, check_inputs=not below, contents=contents)
        if problem is not None:
            problems.append((u.key, problem))
        if problem is not None or below:
            suspect.add(u.key)
    return problems
