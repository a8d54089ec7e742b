"""BREEDS (Santurkar, Tsipras & Madry, ICLR 2021): ImageNet superclasses whose subclasses are the subgroups.

A BREEDS task picks the nodes at one depth of a calibrated WordNet hierarchy (optionally under an ancestor)
that have at least ``N`` ImageNet classes below them; each becomes a class, and ``N`` of its ImageNet classes
(its *subclasses*) are drawn with ``numpy.random.RandomState(2).choice(sorted(subclasses), N, replace=False)``,
one superclass after another in sorted-wnid order — the construction of the robustness library's
``breeds_helpers`` (re-implemented here). The four standard tasks:

========== ===== ======================== ======= ===============
task       level ancestor                 classes subclasses each
========== ===== ======================== ======= ===============
living17   5     n00004258 (living thing) 17      4
entity13   3     —                        13      20
entity30   4     —                        30      8
nonliving26 5    n00021939 (non-living)   26      4
========== ===== ======================== ======= ===============

BREEDS' subpopulation-shift benchmarks split each superclass's drawn subclasses into a *source* half (the first
``N/2`` drawn) and a *target* half. This study uses subclasses as subgroups, so every drawn subclass is a
subgroup (``subgroup_scope = "per_class"``, ``G = N``), in the order drawn: subgroups ``0..N/2−1`` are the
source half, ``N/2..N−1`` the target half (recorded in the bundle's ``source``). ``task = "custom"`` builds a
task the same way from ``level``, ``subclasses_per_class`` (default 4, as in Zhang et al.'s appendix) and an
optional ``ancestor``.

Train images come from ImageNet train, test images from ImageNet validation (50 per subclass).

On disk (``--data-root DIR``):

- hierarchy files ``DIR/breeds/{class_hierarchy.txt, dataset_class_info.json, node_names.txt}`` (from
  github.com/MadryLab/BREEDS-Benchmarks, ``imagenet_class_hierarchy/modified/``; md5-checked; ``download=true``
  fetches them), or option ``info_dir``;
- ImageNet ``DIR/imagenet/{train,val}/<wnid>/*.JPEG`` (validation images sorted into class folders), or option
  ``imagenet_root``.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from harness.errors import ConfigError, DataError
from harness.interfaces import Dataset, DatasetBundle
from harness.interfaces import Options as BaseOptions
from plugins.datasets import _imagefolder
from plugins.datasets._common import IMAGENET_PAPER_DEFAULTS, check_size, stratified_pick

HIERARCHY_URL = "https://raw.githubusercontent.com/MadryLab/BREEDS-Benchmarks/master/imagenet_class_hierarchy/modified"
HIERARCHY_PAGE = "https://github.com/MadryLab/BREEDS-Benchmarks/tree/master/imagenet_class_hierarchy/modified"
#: md5 of the three hierarchy files (BREEDS-Benchmarks, ``imagenet_class_hierarchy/modified/``).
HIERARCHY_MD5: dict[str, str] = {
    "class_hierarchy.txt": "8d208bc43fb484e9b4440716c1f8c7a6",
    "dataset_class_info.json": "21d8708e121cc8a5af2993aedd0c1222",
    "node_names.txt": "aca78d3a7965683a0bf069fc1181376b",
}
ROOT_WNID = "n00001740"  # entity

#: task → (level, ancestor, subclasses per superclass), as in the robustness library's ``make_<task>``.
STANDARD_TASKS: dict[str, tuple[int, str | None, int]] = {
    "living17": (5, "n00004258", 4),
    "entity13": (3, None, 20),
    "entity30": (4, None, 8),
    "nonliving26": (5, "n00021939", 4),
}
#: Subclasses per superclass of a custom task when not given (Zhang et al.'s appendix).
DEFAULT_PER_CLASS = 4
#: BREEDS' seed for drawing subclasses (``random_seed=2`` in every standard task).
BREEDS_SEED = 2
#: How deep below ``ancestor`` superclasses are looked for (as in ``breeds_helpers``).
ANCESTOR_DEPTH = 20

_STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET = 1, 2


def hierarchy_hint(where: str = "DIR/breeds") -> str:
    return (
        f"get the BREEDS hierarchy files ({', '.join(HIERARCHY_MD5)}) from {HIERARCHY_PAGE} "
        f"into {where} (or use the dataset option download=true), or set the dataset option info_dir"
    )


# --------------------------------------------------------------------------------------------------- hierarchy


class Hierarchy:
    """The BREEDS class hierarchy restricted to the ancestors of the 1000 ImageNet classes.

    :param class_info: ``[[index, wnid, name], ...]`` (``dataset_class_info.json``).
    :param edges: ``[(parent, child), ...]`` (``class_hierarchy.txt``).
    :param node_names: wnid → name (``node_names.txt``).
    """

    def __init__(self, class_info: list[list[Any]], edges: list[tuple[str, str]], node_names: dict[str, str],
                 root: str = ROOT_WNID):
        self.leaf_ids: list[str] = [str(c[1]) for c in class_info]
        self.leaf_set = frozenset(self.leaf_ids)
        self.leaf_num = {str(c[1]): int(c[0]) for c in class_info}
        self.leaf_name = {str(c[1]): str(c[2]) for c in class_info}
        self.node_names = node_names
        parents: dict[str, set[str]] = {}
        for p, c in edges:
            parents.setdefault(c, set()).add(p)
        # keep only edges on a path up from a leaf (the relevant part of the graph)
        self.children: dict[str, set[str]] = {}
        todo = [n for n in self.leaf_ids if n in parents]
        seen: set[str] = set()
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            for p in parents.get(node, ()):
                self.children.setdefault(p, set()).add(node)
                todo.append(p)
        self.level = self._levels(root)

    def _levels(self, root: str) -> dict[str, int]:
        """Depth of every node below ``root``: the *longest* path from the root (as ``breeds_helpers``)."""
        order: list[str] = []  # reverse post-order = a topological order of the nodes reachable from root
        state: dict[str, int] = {}
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                state[node] = 2
                order.append(node)
                continue
            if state.get(node):
                continue
            state[node] = 1
            stack.append((node, True))
            for c in sorted(self.children.get(node, ())):
                if not state.get(c):
                    stack.append((c, False))
        level = {root: 0}
        for node in reversed(order):
            if node not in level:
                continue
            for c in self.children.get(node, ()):
                level[c] = max(level.get(c, 0), level[node] + 1)
        return level

    def name(self, wnid: str) -> str:
        return self.node_names.get(wnid, self.leaf_name.get(wnid, wnid))

    def leaves_reachable(self, node: str) -> set[str]:
        """ImageNet classes below ``node`` (not descending past an ImageNet class), and ``node`` if it is one."""
        leaves: set[str] = set()
        todo = [node]
        seen: set[str] = set()
        while todo:
            n = todo.pop()
            for c in self.children.get(n, ()):
                if c in self.leaf_set:
                    leaves.add(c)
                elif c not in seen:
                    seen.add(c)
                    todo.append(c)
        if node in self.leaf_set:
            leaves.add(node)
        return leaves

    def descendants(self, node: str, depth: int = ANCESTOR_DEPTH) -> set[str]:
        """``node`` and every node at most ``depth`` edges below it."""
        out, frontier = {node}, [node]
        for _ in range(depth):
            frontier = [c for n in frontier for c in self.children.get(n, ())]
            if not frontier:
                break
            out.update(frontier)
        return out

    def nodes_at_level(self, level: int, ancestor: str | None = None) -> list[str]:
        valid = self.descendants(ancestor) if ancestor is not None else None
        return sorted(n for n, d in self.level.items() if d == level and (valid is None or n in valid))


@dataclass(frozen=True)
class Task:
    """A BREEDS task: superclass wnids and, per superclass, its subclass wnids in the order drawn."""

    superclasses: tuple[str, ...]
    subclasses: tuple[tuple[str, ...], ...]
    level: int
    ancestor: str | None
    per_class: int


def make_task(h: Hierarchy, level: int, per_class: int, ancestor: str | None = None, seed: int = BREEDS_SEED) -> Task:
    """Superclasses at ``level`` (under ``ancestor``) with at least ``per_class`` ImageNet classes; ``per_class``
    of them drawn per superclass (see the module docstring).

    :raises ConfigError: when no node qualifies (or the ancestor is unknown).
    """
    if ancestor is not None and ancestor not in h.level:
        raise ConfigError(f"breeds ancestor {ancestor!r} is not a node of the hierarchy below {ROOT_WNID}")
    nodes = h.nodes_at_level(level, ancestor)
    leaves = [sorted(h.leaves_reachable(n)) for n in nodes]
    chosen = [(n, ls) for n, ls in zip(nodes, leaves, strict=True) if len(ls) >= per_class]
    if not chosen:
        most = max((len(ls) for ls in leaves), default=0)
        raise ConfigError(
            f"breeds: no superclass at level {level}{f' under {ancestor}' if ancestor else ''} has "
            f"{per_class} ImageNet classes (at most {most}); lower subclasses_per_class or pick another level"
        )
    rng = np.random.RandomState(seed)  # legacy generator, as BREEDS: the same draws as the published tasks
    subclasses = tuple(tuple(str(w) for w in rng.choice(ls, per_class, replace=False)) for _, ls in chosen)
    flat = [w for s in subclasses for w in s]
    if len(set(flat)) != len(flat):
        raise ConfigError(f"breeds: superclasses at level {level} share ImageNet classes; pick another level")
    return Task(tuple(n for n, _ in chosen), subclasses, level, ancestor, per_class)


def first_name(name: str) -> str:
    return name.split(",")[0].strip()


def unique_names(names: list[str], wnids: list[str]) -> tuple[str, ...]:
    """First synonyms, with the wnid appended where two would read the same."""
    short = [first_name(n) for n in names]
    return tuple(s if short.count(s) == 1 else f"{s} ({w})" for s, w in zip(short, wnids, strict=True))


# --------------------------------------------------------------------------------------------------- files


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - fixed https URL
        return response.read()


def download_hierarchy(dest: Path) -> None:
    """Download the three hierarchy files into ``dest``, md5-checked (a mismatching file is not kept)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in HIERARCHY_MD5.items():
        url = f"{HIERARCHY_URL}/{name}"
        try:
            data = _fetch(url)
        except Exception as exc:  # network errors come in many types
            raise DataError(f"downloading {url} failed ({exc}); {hierarchy_hint(str(dest))}.") from None
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != md5:
            raise DataError(f"downloaded {url} has md5 {got}, expected {md5}; {hierarchy_hint(str(dest))}.")
        tmp = dest / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, dest / name)


def read_hierarchy(info_dir: Path, *, verify: bool = True) -> tuple[Hierarchy, dict[str, str]]:
    """Parse (and md5-check) the hierarchy files in ``info_dir``.

    :raises DataError: missing, corrupt or malformed files.
    """
    hint = hierarchy_hint(str(info_dir))
    missing = [n for n in HIERARCHY_MD5 if not (info_dir / n).is_file()]
    if missing:
        raise DataError(f"BREEDS hierarchy files missing in {info_dir} ({', '.join(missing)}); {hint}.")
    raw = {}
    md5s = {}
    for name, expected in HIERARCHY_MD5.items():
        raw[name] = (info_dir / name).read_bytes()
        md5s[name] = hashlib.md5(raw[name], usedforsecurity=False).hexdigest() if verify else ""
        if verify and md5s[name] != expected:
            raise DataError(f"{info_dir / name} is corrupt (md5 {md5s[name]}, expected {expected}); delete it and "
                            f"{hint}.")
    try:
        class_info = json.loads(raw["dataset_class_info.json"])
        edges = [tuple(line.split()) for line in raw["class_hierarchy.txt"].decode().splitlines() if line.strip()]
        names = dict(line.split("\t", 1) for line in raw["node_names.txt"].decode().splitlines() if line.strip())
        if any(len(e) != 2 for e in edges) or not all(len(c) == 3 for c in class_info):
            raise ValueError("unexpected line format")
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise DataError(f"BREEDS hierarchy files in {info_dir} are malformed ({exc}); {hint}.") from None
    return Hierarchy(class_info, edges, names), md5s  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- plugin


class BreedsOptions(BaseOptions):
    """Options of the ``breeds`` dataset."""

    task: Literal["living17", "entity13", "entity30", "nonliving26", "custom"] = Field(
        "living17", description="A standard BREEDS task, or custom (level, subclasses_per_class, ancestor)."
    )
    level: int | None = Field(None, ge=1, description="custom: depth of the superclasses in the hierarchy.")
    subclasses_per_class: int | None = Field(
        None, ge=2, description="custom: subclasses (subgroups) drawn per superclass (default 4)."
    )
    ancestor: str | None = Field(None, description="custom: only superclasses below this wnid.")
    info_dir: str | None = Field(None, description="Folder of the hierarchy files; default <data_root>/breeds.")
    download: bool = Field(False, description="Download the hierarchy files (md5-checked) when missing.")
    verify: bool = Field(True, description="Check the hierarchy files' md5.")
    imagenet_root: str | None = Field(
        None, description="ImageNet folder with train/<wnid>/ and val/<wnid>/; default <data_root>/imagenet."
    )
    resolution: int = Field(64, ge=8, le=512, description="Working side in pixels (64 on CPU; 224 on a GPU).")
    crop: float = Field(0.875, gt=0.0, le=1.0, description="Centre crop: fraction of the short side kept.")
    train_size: int | None = Field(
        None, ge=1, description="Subsample of the train set, stratified by subclass (decoded images only)."
    )
    test_size: int | None = Field(None, ge=1, description="Subsample of the test set, stratified by subclass.")
    seed: int = Field(0, ge=0, description="Seed of the subsampling RNG (not of the subclass draw, which is BREEDS').")
    workers: int | None = Field(None, ge=1, description="JPEG decoding processes (default: min(8, CPUs)).")
    cache: bool = Field(True, description="Cache decoded images as shards under the cache directory.")

    @model_validator(mode="after")
    def _custom_fields(self) -> BreedsOptions:
        if self.task == "custom":
            if self.level is None:
                raise ValueError("task='custom' needs level (the depth of the superclasses, e.g. 4)")
        elif self.level is not None or self.ancestor is not None or self.subclasses_per_class is not None:
            raise ValueError(f"level, ancestor and subclasses_per_class apply only to task='custom', not {self.task!r}")
        return self

    def task_parameters(self) -> tuple[int, str | None, int]:
        if self.task == "custom":
            assert self.level is not None
            return self.level, self.ancestor, self.subclasses_per_class or DEFAULT_PER_CLASS
        return STANDARD_TASKS[self.task]


class Breeds(Dataset):
    """BREEDS superclasses as classes, their subclasses as per-class subgroups (see the module docstring)."""

    Options = BreedsOptions
    paper_defaults: ClassVar[dict[str, Any]] = IMAGENET_PAPER_DEFAULTS

    options: BreedsOptions

    def _info_dir(self) -> Path:
        o = self.options
        if o.info_dir:
            info_dir = Path(o.info_dir).expanduser()
        elif self.data_root is not None:
            info_dir = Path(self.data_root).expanduser() / "breeds"
        else:
            raise DataError(f"breeds needs its hierarchy files but no --data-root was given; {hierarchy_hint()}.")
        if o.download and not all((info_dir / n).is_file() for n in HIERARCHY_MD5):
            download_hierarchy(info_dir)
        return info_dir

    @cached_property
    def _hierarchy(self) -> tuple[Hierarchy, dict[str, str], Path]:
        info_dir = self._info_dir()
        h, md5s = read_hierarchy(info_dir, verify=self.options.verify)
        return h, md5s, info_dir

    def task(self) -> Task:
        """The task's superclasses and subclasses (needs only the hierarchy files)."""
        h, _, _ = self._hierarchy
        level, ancestor, per_class = self.options.task_parameters()
        return make_task(h, level, per_class, ancestor)

    def names(self, task: Task) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
        h, _, _ = self._hierarchy
        classes = unique_names([h.name(w) for w in task.superclasses], list(task.superclasses))
        subgroups = tuple(unique_names([h.leaf_name[w] for w in subs], list(subs)) for subs in task.subclasses)
        return classes, subgroups

    def _files(self, task: Task) -> dict[str, Any]:
        imagenet = _imagefolder.find_imagenet_root(self.data_root, self.options.imagenet_root, "breeds")
        hint = _imagefolder.imagenet_hint(str(imagenet))
        wnids = [w for subs in task.subclasses for w in subs]
        out: dict[str, Any] = {"imagenet": imagenet}
        for split in ("train", "val"):
            per_wnid = _imagefolder.list_class_folders(imagenet / split, wnids, dataset=f"breeds {self.options.task}",
                                                       hint=hint)
            paths, labels, groups = [], [], []
            k = 0
            for c, subs in enumerate(task.subclasses):
                for g in range(len(subs)):
                    files = per_wnid[k]
                    k += 1
                    paths += [str(p) for p in files]
                    labels += [c] * len(files)
                    groups += [g] * len(files)
            out[split] = (paths, np.asarray(labels, dtype=np.int64), np.asarray(groups, dtype=np.int64))
        return out

    def _subsample(self, split: tuple[list[str], np.ndarray, np.ndarray], size: int | None, stream: int,
                   what: str, per_class: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        paths, labels, groups = split
        idx = stratified_pick(labels * per_class + groups, size, np.random.default_rng([self.options.seed, stream]),
                              what=f"breeds option {what}")
        return [paths[i] for i in idx], labels[idx], groups[idx]

    def load(self) -> DatasetBundle:
        import torch

        from harness.imageset import ImageSet

        o = self.options
        task = self.task()
        h, md5s, info_dir = self._hierarchy
        files = self._files(task)
        train_paths, train_y, train_g = self._subsample(files["train"], o.train_size, _STREAM_TRAIN_SUBSET,
                                                        "train_size", task.per_class)
        test_paths, test_y, test_g = self._subsample(files["val"], o.test_size, _STREAM_TEST_SUBSET, "test_size",
                                                     task.per_class)
        common = dict(name=f"breeds-{o.task}", size=o.resolution, crop=o.crop, cache_dir=self.cache_dir,
                      workers=o.workers, use_cache=o.cache, hint=_imagefolder.imagenet_hint(str(files["imagenet"])))
        train_dec = _imagefolder.load_images([(p, None) for p in train_paths], role="train", **common)
        test_dec = _imagefolder.load_images([(p, None) for p in test_paths], role="test", **common)
        train = ImageSet.create(train_dec.images, torch.from_numpy(train_y), torch.from_numpy(train_g))
        test = ImageSet.create(test_dec.images, torch.from_numpy(test_y), torch.from_numpy(test_g))
        class_names, subgroup_names = self.names(task)
        digest = hashlib.sha256()
        for p in train_paths + test_paths:
            digest.update(f"{os.path.relpath(p, files['imagenet'])}\0{os.path.getsize(p)}\n".encode())
        half = task.per_class // 2
        info = {
            "source": "breeds-imagenet",
            "task": o.task,
            "level": task.level,
            "ancestor": task.ancestor,
            "subclasses_per_class": task.per_class,
            "subclass_draw_seed": BREEDS_SEED,
            "superclasses": list(task.superclasses),
            "subclasses": [list(s) for s in task.subclasses],
            "source_subclasses": [list(s[:half]) for s in task.subclasses],
            "target_subclasses": [list(s[half:]) for s in task.subclasses],
            "info_dir": str(info_dir),
            "hierarchy_md5": dict(md5s) if o.verify else None,
            "imagenet_root": str(files["imagenet"]),
            "sha256": digest.hexdigest(),
            "sha256_of": "relative path and byte size of every ImageNet file used, in order",
            "split": "train: ImageNet train; test: ImageNet val",
            "num_images": len(train) + len(test),
            "num_train": len(train),
            "num_test": len(test),
            "resolution": o.resolution,
            "crop": o.crop,
            "decoded_sha256": train.sha256(),
            "decoded_test_sha256": test.sha256(),
            "cache": {"train": train_dec.cache, "test": test_dec.cache},
        }
        return DatasetBundle(
            train=train,
            test=test,
            class_names=class_names,
            subgroup_names=subgroup_names,
            subgroup_scope="per_class",
            source=info,
        )

    def check(self) -> str:
        o = self.options
        task = self.task()
        _, _, info_dir = self._hierarchy
        files = self._files(task)
        n_train, n_test = len(files["train"][0]), len(files["val"][0])
        for what, size, available in (("train_size", o.train_size, n_train), ("test_size", o.test_size, n_test)):
            check_size(size, available, what=f"breeds option {what}")
        ok = "hierarchy md5 ok" if o.verify else "hierarchy not verified"
        return (
            f"BREEDS {o.task} (hierarchy {info_dir}, ImageNet {files['imagenet']}): {len(task.superclasses)} classes × "
            f"{task.per_class} subclasses, {o.train_size or n_train} train / {o.test_size or n_test} test images ({ok})"
        )
