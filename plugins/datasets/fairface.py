"""FairFace (Kärkkäinen & Joo, 2021): faces balanced by race, labelled with gender, race and age.

Defaults follow Wyllie et al. (Fairness Feedback Loops, 2024; reference code ``cleverhans-lab/FairFeedbackLoops``,
``prep_data/fairface.py``): the class is ``gender`` (0 = male, 1 = female), the subgroup the intersection of
``race`` (7 values) and binarised ``age`` (under 30 / 30 and over): ``G = 14``, scope ``global``. ``target`` is
any one column (gender, race, age) and ``group`` one or more of the others (their intersection, the first column
varying slowest); ``age = "bins"`` keeps the release's 9 age bins instead of the binary split. The subgroup is not
measurable from pixels: the harness estimates it for generated images with its oracle.

Value orders (the reference code's, by train-set population): gender Male, Female; race White, Latino_Hispanic,
Indian, East Asian, Black, Southeast Asian, Middle Eastern; age 0-2, 3-9, 10-19, 20-29 (under 30), 30-39, 40-49,
50-59, 60-69, more than 70 (30 and over).

Split: the release's — train = ``fairface_label_train.csv`` (86,744 images), test = ``fairface_label_val.csv``
(10,954). (The reference code instead tests on the first 10,954 rows of the train CSV and validates on the val
CSV.)

On disk (the release, github.com/joojs/fairface): ``<data_root>/fairface/`` (or ``FairFace/``, or ``<data_root>``
itself) holding ``fairface_label_train.csv`` and ``fairface_label_val.csv`` — a header ``file,age,gender,race,
service_test`` (``service_test`` is not used) then rows such as ``train/1.jpg,50-59,Male,East Asian,True`` — and
the images they name, ``train/<n>.jpg`` and ``val/<n>.jpg`` (224×224, from
``fairface-img-margin025-trainval.zip``; the 1.25-margin release has the same layout). No checksums are published: the CSVs are checked for their columns and values,
every image used must exist, and one that cannot be decoded stops the load naming it. Images are decoded once
into the shard cache (centre ``crop`` of the square image, resampled to ``resolution``²).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from harness.errors import DataError
from harness.interfaces import DatasetBundle
from harness.interfaces import Options as BaseOptions
from plugins.datasets import _faces

FOLDERS: tuple[str, ...] = ("fairface", "FairFace")
CSV_FILES: dict[str, str] = {"train": "fairface_label_train.csv", "test": "fairface_label_val.csv"}
REQUIRED_COLUMNS: tuple[str, ...] = ("file", "age", "gender", "race")
#: Each column's values, in label order, with their readable names.
GENDERS: tuple[tuple[str, str], ...] = (("Male", "male"), ("Female", "female"))
RACES: tuple[tuple[str, str], ...] = (
    ("White", "white"),
    ("Latino_Hispanic", "latino/hispanic"),
    ("Indian", "indian"),
    ("East Asian", "east asian"),
    ("Black", "black"),
    ("Southeast Asian", "southeast asian"),
    ("Middle Eastern", "middle eastern"),
)
AGES: tuple[tuple[str, str], ...] = (
    ("0-2", "age 0-2"),
    ("3-9", "age 3-9"),
    ("10-19", "age 10-19"),
    ("20-29", "age 20-29"),
    ("30-39", "age 30-39"),
    ("40-49", "age 40-49"),
    ("50-59", "age 50-59"),
    ("60-69", "age 60-69"),
    ("more than 70", "age 70+"),
)
#: Binary age (the reference code's "youngs" and "olds"): the bins below 30, and the rest.
AGE_BINARY_NAMES: tuple[str, str] = ("under 30", "30 and over")
AGE_BINARY_SPLIT = 4  # index of "30-39" in AGES
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {"gender": GENDERS, "race": RACES, "age": AGES}

Column = Literal["gender", "race", "age"]

_STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET = 1, 2


def download_hint(where: Path | str = "DIR") -> str:
    return (
        "get FairFace from https://github.com/joojs/fairface: the images (Padding=0.25, "
        "fairface-img-margin025-trainval.zip) and the labels (fairface_label_train.csv, fairface_label_val.csv), "
        f"and unzip them so that {where}/fairface/train/1.jpg, {where}/fairface/val/1.jpg and "
        f"{where}/fairface/fairface_label_train.csv exist"
    )


class FairFaceOptions(_faces.FaceOptions):
    """Options of the ``fairface`` dataset."""

    target: Column = Field("gender", description="The column that is the class.")
    group: tuple[Column, ...] = Field(
        ("race", "age"), description="The column(s) whose (intersection of) values are the subgroups."
    )
    age: Literal["binary", "bins"] = Field(
        "binary", description="binary: under 30 / 30 and over (the reference code's); bins: the release's 9 bins."
    )

    @field_validator("group")
    @classmethod
    def _group(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"group needs one or more distinct columns, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> FairFaceOptions:
        if self.target in self.group:
            raise ValueError(f"{self.target} cannot be both the target and a group column")
        return self

    def value_names(self, column: str) -> tuple[str, ...]:
        """Readable names of ``column``'s codes."""
        if column == "age" and self.age == "binary":
            return AGE_BINARY_NAMES
        return tuple(name for _, name in COLUMNS[column])

    def encode(self, column: str, codes: np.ndarray) -> np.ndarray:
        """Release codes (indices into :data:`COLUMNS`) → this dataset's codes (binary age where asked)."""
        if column == "age" and self.age == "binary":
            return (codes >= AGE_BINARY_SPLIT).astype(np.int64)
        return codes


def find_fairface_dir(root: Path) -> Path | None:
    for candidate in (*(root / f for f in FOLDERS), root):
        if any((candidate / name).is_file() for name in CSV_FILES.values()):
            return candidate
    return None


def read_labels(path: Path, *, hint: str) -> tuple[list[str], dict[str, np.ndarray], bytes]:
    """One label CSV → (image paths relative to its folder, release codes per column, the file's bytes).

    :raises DataError: missing, unreadable, without the columns, or with a value FairFace does not have.
    """
    raw = _faces.check_readable(path, "fairface", hint)
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"fairface: {path} is not a CSV file ({_faces.one_line(exc)}); {hint}.") from None
    header = [h.strip() for h in rows[0]] if rows else []
    if not set(REQUIRED_COLUMNS) <= set(header):
        raise DataError(f"fairface: {path} lacks the columns {', '.join(REQUIRED_COLUMNS)} (header "
                        f"{','.join(header) or 'empty'}); {hint}.")
    body = [r for r in rows[1:] if r]
    if not body:
        raise DataError(f"fairface: {path} lists no images; {hint}.")
    if any(len(r) != len(header) for r in body):
        line = next(i for i, r in enumerate(rows) if r and len(r) != len(header)) + 1
        raise DataError(f"fairface: line {line} of {path} does not have {len(header)} fields; {hint}.")
    table = np.array(body, dtype=str)
    files = [f.strip() for f in table[:, header.index("file")]]
    codes = {}
    for column, values in COLUMNS.items():
        col = np.char.strip(table[:, header.index(column)])
        known = np.array([v for v, _ in values])
        order = np.argsort(known)
        pos = np.clip(np.searchsorted(known[order], col), 0, known.size - 1)
        found = known[order][pos] == col
        if not found.all():
            i = int(np.flatnonzero(~found)[0])
            raise DataError(f"fairface: line {i + 2} of {path} has {column} {str(col[i])!r}, not one of "
                            f"{', '.join(known)}; {hint}.")
        codes[column] = order[pos].astype(np.int64)
    return files, codes, raw


class FairFace(_faces.FaceDataset):
    """FairFace faces: the class is one column (gender), the subgroup the others (race × binary age), global."""

    Options: ClassVar[type[BaseOptions]] = FairFaceOptions
    dataset_name = "fairface"
    marker = f"fairface/{CSV_FILES['train']}"
    find_dir = staticmethod(find_fairface_dir)
    download_hint = staticmethod(download_hint)

    options: FairFaceOptions

    def _splits(self) -> tuple[Path, dict[str, Any]]:
        """The folder and, per split, image paths, labels and subgroups after subsampling, having checked that
        every image used exists; plus the CSVs' bytes."""
        o = self.options
        folder, hint = self._folder(), self._hint()
        sizes = [len(o.value_names(c)) for c in o.group]
        out: dict[str, Any] = {"texts": []}
        for split, size, stream in (("train", o.train_size, _STREAM_TRAIN_SUBSET),
                                    ("test", o.test_size, _STREAM_TEST_SUBSET)):
            files, codes, raw = read_labels(folder / CSV_FILES[split], hint=hint)
            labels = o.encode(o.target, codes[o.target])
            groups = _faces.intersect([o.encode(c, codes[c]) for c in o.group], sizes)
            keep = _faces.pick(labels, groups, int(np.prod(sizes)), size, o.seed, stream,
                               what=f"fairface option {split}_size")
            out[split] = ([files[i] for i in keep], labels[keep], groups[keep], len(files))
            out["texts"].append(raw)
        missing = _faces.missing_files(folder, out["train"][0] + out["test"][0])
        if missing:
            raise DataError(f"fairface: {len(missing)} images named in the label CSVs are missing under {folder} "
                            f"(e.g. {missing[0]}); {hint}.")
        return folder, out

    def names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Class names and subgroup names."""
        o = self.options
        return o.value_names(o.target), _faces.intersect_names([o.value_names(c) for c in o.group])

    def load(self) -> DatasetBundle:
        o = self.options
        folder, splits = self._splits()
        sets, cache = {}, {}
        for split in ("train", "test"):
            files, labels, groups, _ = splits[split]
            sets[split], cache[split] = _faces.decode_split([str(folder / f) for f in files], labels, groups,
                                                            dataset="fairface", role=split, options=o,
                                                            cache_dir=self.cache_dir, hint=self._hint())
        train, test = sets["train"], sets["test"]
        class_names, subgroup_names = self.names()
        used = [str(folder / f) for split in ("train", "test") for f in splits[split][0]]
        info = {
            "source": "fairface",
            "path": str(folder),
            "target": o.target,
            "group": list(o.group),
            "age": o.age,
            "split": f"train: {CSV_FILES['train']}; test: {CSV_FILES['test']}",
            "sha256": _faces.files_digest(used, folder, texts=splits["texts"]),
            "sha256_of": "the two label CSVs, then the relative path and byte size of every image used, in order",
            "source_images": splits["train"][3] + splits["test"][3],
            "num_images": len(train) + len(test),
            "num_train": len(train),
            "num_test": len(test),
            "resolution": o.resolution,
            "crop": o.crop,
            "decoded_sha256": train.sha256(),
            "decoded_test_sha256": test.sha256(),
            "cache": cache,
        }
        return DatasetBundle(train=train, test=test, class_names=class_names, subgroup_names=subgroup_names,
                             subgroup_scope="global", source=info)

    def check(self) -> str:
        o = self.options
        folder, splits = self._splits()  # also checks train_size / test_size and that the images exist
        classes, groups = self.names()
        return (f"FairFace at {folder}: {len(splits['train'][0])} train / {len(splits['test'][0])} test images, "
                f"{len(classes)} classes ({o.target}), {len(groups)} subgroups ({' × '.join(o.group)}), "
                f"{o.resolution}² (no published checksums; labels and files checked)")
