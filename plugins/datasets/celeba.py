"""CelebA (Liu et al., 2015) as a fairness dataset: one binary attribute is the class, others are the subgroup.

Defaults follow Wyllie et al. (Fairness Feedback Loops, 2024; reference code ``cleverhans-lab/FairFeedbackLoops``,
``prep_data/prep_celeba.py``): the class is ``Attractive`` (0 = not attractive, 1 = attractive), the subgroup
``Male`` (0 = female, 1 = male); train = the official partition 0 (162,770 images), test = partition 2 (19,962);
the validation partition 1 is not used. ``target`` and ``group`` name any of the 40 attributes; ``group`` may be a
list, whose intersection is the subgroup (``G = 2^k``, the first attribute varying slowest). Scope ``global``.
The subgroup is not measurable from pixels: the harness estimates it for generated images with its oracle.

On disk: torchvision's layout, ``<data_root>/celeba/`` (or ``<data_root>`` itself) holding

- ``img_align_celeba/000001.jpg`` … ``202599.jpg`` (the aligned and cropped faces, 178×218);
- ``list_attr_celeba.txt``: a count line, a header line of the 40 attribute names, then one line per image,
  ``000001.jpg -1  1  1 -1 …`` (values ``1`` / ``-1`` separated by one or two spaces);
- ``list_eval_partition.txt``: ``000001.jpg 0`` per image (0 train, 1 validation, 2 test).

The two text files are md5-checked against torchvision's list (``verify``); every image used must exist, and one
that cannot be decoded stops the load naming it. Images are decoded once into the shard cache (the centre square
of ``crop`` × the short side, i.e. the middle 178×178 at ``crop = 1``, resampled to ``resolution``²; the
reference code instead squashes the whole 178×218 frame to 128×128).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from harness.errors import DataError
from harness.interfaces import DatasetBundle
from harness.interfaces import Options as BaseOptions
from plugins.datasets import _faces

#: The 40 attributes, in the order of ``list_attr_celeba.txt``'s header.
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
#: torchvision's ``CelebA.base_folder`` and the md5 of the two annotation files used (from ``CelebA.file_list``;
#: ``tests/test_fairness_datasets.py`` checks they agree with the installed torchvision).
BASE_FOLDER = "celeba"
IMAGE_FOLDER = "img_align_celeba"
ATTR_FILE, PARTITION_FILE = "list_attr_celeba.txt", "list_eval_partition.txt"
FILES_MD5: dict[str, str] = {
    ATTR_FILE: "75e246fa4810816ffd6ee81facbd244c",
    PARTITION_FILE: "d32c9cbf5e040fd4025c592c306e6668",
}
#: Partition numbers of the splits used.
TRAIN_PARTITION, TEST_PARTITION = 0, 2
#: Names of the two values of an attribute where "not X" reads badly.
VALUE_NAMES: dict[str, tuple[str, str]] = {"Male": ("female", "male")}

_STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET = 1, 2


def download_hint(where: Path | str = "DIR") -> str:
    return (
        "get CelebA's Align&Cropped images (img_align_celeba.zip) and the annotations list_attr_celeba.txt and "
        "list_eval_partition.txt from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (or with "
        f"`python -c \"import torchvision; torchvision.datasets.CelebA('{where}', download=True)\"`, from Google "
        f"Drive, often over its quota) and place them as {where}/celeba/img_align_celeba/*.jpg, "
        f"{where}/celeba/{ATTR_FILE} and {where}/celeba/{PARTITION_FILE}"
    )


def attribute(name: str) -> str:
    """The canonical spelling of a CelebA attribute (case and spaces forgiven): ``"wearing hat"`` →
    ``"Wearing_Hat"``.

    :raises ValueError: not one of the 40.
    """
    key = name.strip().replace(" ", "_").lower()
    for a in ATTRIBUTES:
        if a.lower() == key:
            return a
    raise ValueError(f"unknown CelebA attribute {name!r}: use one of {', '.join(ATTRIBUTES)}")


def value_names(attr: str) -> tuple[str, str]:
    """Names of an attribute's values ``-1`` and ``1``: ``("not attractive", "attractive")``."""
    if attr in VALUE_NAMES:
        return VALUE_NAMES[attr]
    readable = attr.replace("_", " ").lower()
    return f"not {readable}", readable


class CelebAOptions(_faces.FaceOptions):
    """Options of the ``celeba`` dataset."""

    target: str = Field("Attractive", description="The attribute that is the class (1 = has it).")
    group: tuple[str, ...] = Field(
        ("Male",), description="The attribute(s) whose (intersection of) values are the subgroups."
    )
    verify: bool = Field(True, description="Check the md5 of list_attr_celeba.txt and list_eval_partition.txt.")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return attribute(value)

    @field_validator("group")
    @classmethod
    def _group(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(attribute(v) for v in value)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"group needs one or more distinct attributes, got {list(value)}")
        return names

    @model_validator(mode="after")
    def _distinct(self) -> CelebAOptions:
        if self.target in self.group:
            raise ValueError(f"{self.target} cannot be both the target and a group attribute")
        return self


class Annotations:
    """The parsed annotation files: image names, their ``-1``/``1`` attributes and partition."""

    def __init__(self, names: np.ndarray, values: np.ndarray, partition: np.ndarray, md5: dict[str, str],
                 sha256: str):
        self.names, self.values, self.partition, self.md5, self.sha256 = names, values, partition, md5, sha256

    def column(self, attr: str) -> np.ndarray:
        """0/1 per image (``-1`` → 0)."""
        return (self.values[:, ATTRIBUTES.index(attr)] > 0).astype(np.int64)


def find_celeba_dir(root: Path) -> Path | None:
    for candidate in (root / BASE_FOLDER, root):
        if (candidate / ATTR_FILE).is_file() or (candidate / IMAGE_FOLDER).is_dir():
            return candidate
    return None


def read_annotations(folder: Path, *, verify: bool, hint: str) -> Annotations:
    """Parse and check ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` (vectorised, ~1 s for CelebA).

    :raises DataError: missing, corrupt (md5), malformed, or the two files list different images.
    """
    raw = {name: _faces.check_readable(folder / name, "celeba", hint) for name in FILES_MD5}
    md5s = {}
    for name, expected in FILES_MD5.items():
        md5s[name] = hashlib.md5(raw[name], usedforsecurity=False).hexdigest()
        if verify and md5s[name] != expected:
            raise DataError(f"celeba: {folder / name} is corrupt (md5 {md5s[name]}, expected {expected}); {hint}.")
    attr_path = folder / ATTR_FILE
    try:
        text = raw[ATTR_FILE].decode("ascii")
        count_line, header, body = (text.split("\n", 2) + ["", ""])[:3]
        count = int(count_line.strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"celeba: {attr_path} does not start with the image count line; {hint}.") from None
    if tuple(header.split()) != ATTRIBUTES:
        raise DataError(f"celeba: the header of {attr_path} is not CelebA's 40 attribute names; {hint}.")
    names, values = _parse_table(body, 1 + len(ATTRIBUTES), attr_path, hint)
    if values.shape[0] != count:
        raise DataError(f"celeba: {attr_path} announces {count} images and lists {values.shape[0]}; {hint}.")
    if not np.isin(values, (-1, 1)).all():
        raise DataError(f"celeba: {attr_path} has attribute values other than 1 and -1; {hint}.")
    part_path = folder / PARTITION_FILE
    try:
        part_text = raw[PARTITION_FILE].decode("ascii")
    except UnicodeDecodeError:
        raise DataError(f"celeba: {part_path} is not a text file; {hint}.") from None
    part_names, part = _parse_table(part_text, 2, part_path, hint)
    part = part[:, 0]
    if not np.isin(part, (0, 1, 2)).all():
        raise DataError(f"celeba: {part_path} has partitions other than 0, 1 and 2; {hint}.")
    if np.unique(names).size != names.size:
        raise DataError(f"celeba: {attr_path} lists an image twice; {hint}.")
    if not np.array_equal(names, part_names):
        a, p = np.argsort(names), np.argsort(part_names)
        if names.size != part_names.size or not np.array_equal(names[a], part_names[p]):
            raise DataError(f"celeba: {attr_path} and {part_path} list different images; {hint}.")
        aligned = np.empty_like(part)
        aligned[a] = part[p]
        part = aligned
    sha = hashlib.sha256(raw[ATTR_FILE] + b"\0" + raw[PARTITION_FILE]).hexdigest()
    return Annotations(names, values, part, md5s, sha)


def _parse_table(text: str, columns: int, path: Path, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """Whitespace-separated lines ``name v1 v2 …`` → (names, int8 values ``N×(columns − 1)``)."""
    if len(text.lstrip().split("\n", 1)[0].split()) != columns:
        raise DataError(f"celeba: {path} does not have {columns} columns per line; {hint}.")
    try:
        values = np.loadtxt(io.StringIO(text), dtype=np.int8, usecols=range(1, columns), ndmin=2)
        names = np.loadtxt(io.StringIO(text), dtype=str, usecols=0, ndmin=1)
    except ValueError as exc:
        raise DataError(f"celeba: {path} is malformed ({_faces.one_line(exc)}); {hint}.") from None
    if names.shape[0] != values.shape[0] or values.shape[0] == 0:
        raise DataError(f"celeba: {path} lists no images; {hint}.")
    return names, values


class CelebA(_faces.FaceDataset):
    """CelebA faces: the class is one attribute, the subgroup another (or an intersection), scope global."""

    Options: ClassVar[type[BaseOptions]] = CelebAOptions
    dataset_name = "celeba"
    marker = f"{BASE_FOLDER}/{ATTR_FILE}"
    find_dir = staticmethod(find_celeba_dir)
    download_hint = staticmethod(download_hint)

    options: CelebAOptions

    def _splits(self) -> tuple[Path, Annotations, dict[str, tuple[list[str], np.ndarray, np.ndarray]]]:
        """The folder, the annotations and per split the image paths, labels and subgroups after subsampling,
        having checked that every image used exists."""
        o = self.options
        folder, hint = self._folder(), self._hint()
        ann = read_annotations(folder, verify=o.verify, hint=hint)
        labels = ann.column(o.target)
        groups = _faces.intersect([ann.column(a) for a in o.group], [2] * len(o.group))
        g = 2 ** len(o.group)
        out = {}
        for split, partition, size, stream in (("train", TRAIN_PARTITION, o.train_size, _STREAM_TRAIN_SUBSET),
                                               ("test", TEST_PARTITION, o.test_size, _STREAM_TEST_SUBSET)):
            rows = np.flatnonzero(ann.partition == partition)
            if rows.size == 0:
                raise DataError(f"celeba: {folder / PARTITION_FILE} puts no image in partition {partition} "
                                f"({split}); {hint}.")
            keep = rows[_faces.pick(labels[rows], groups[rows], g, size, o.seed, stream,
                                    what=f"celeba option {split}_size")]
            names = [f"{IMAGE_FOLDER}/{n}" for n in ann.names[keep]]
            out[split] = (names, labels[keep], groups[keep])
        missing = _faces.missing_files(folder, out["train"][0] + out["test"][0])
        if missing:
            raise DataError(f"celeba: {len(missing)} listed images are missing from {folder / IMAGE_FOLDER} "
                            f"(e.g. {missing[0]}); {hint}.")
        return folder, ann, out

    def names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Class names and subgroup names."""
        o = self.options
        return value_names(o.target), _faces.intersect_names([value_names(a) for a in o.group])

    def load(self) -> DatasetBundle:
        o = self.options
        folder, ann, splits = self._splits()
        hint = self._hint()
        sets, cache = {}, {}
        for split, (names, labels, groups) in splits.items():
            sets[split], cache[split] = _faces.decode_split([str(folder / n) for n in names], labels, groups,
                                                            dataset="celeba", role=split, options=o,
                                                            cache_dir=self.cache_dir, hint=hint)
        train, test = sets["train"], sets["test"]
        class_names, subgroup_names = self.names()
        used = [str(folder / n) for split in ("train", "test") for n in splits[split][0]]
        info = {
            "source": "celeba",
            "path": str(folder),
            "target": o.target,
            "group": list(o.group),
            "split": f"train: partition {TRAIN_PARTITION}; test: partition {TEST_PARTITION}",
            "md5": ann.md5,
            "verified": o.verify,
            "annotations_sha256": ann.sha256,
            "sha256": _faces.files_digest(used, folder, texts=(ann.sha256.encode(),)),
            "sha256_of": "the annotation files, then the relative path and byte size of every image used, in order",
            "source_images": int(ann.names.size),
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
        folder, _, splits = self._splits()  # also checks train_size / test_size and that the images exist
        classes, groups = self.names()
        ok = "annotations md5 ok" if o.verify else "annotations not verified"
        return (f"CelebA at {folder}: {len(splits['train'][0])} train / {len(splits['test'][0])} test images, "
                f"classes {' / '.join(classes)}, subgroups {' / '.join(groups)}, {o.resolution}² ({ok})")
