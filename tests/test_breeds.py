"""BREEDS dataset plugin: task construction on the REAL hierarchy files (../shared/data/breeds), a fake ImageNet
tree of tiny JPEGs for living17, caching, md5 and error paths, and a tiny end-to-end run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from harness.errors import ConfigError, DataError
from harness.specs import PAPER_IMAGE_ORACLE
from plugins.datasets import _imagefolder, breeds
from plugins.datasets.breeds import HIERARCHY_MD5, Breeds, BreedsOptions, make_task, read_hierarchy
from tests.conftest import shared_data_root
from tests.test_dataset_cache import fake_imagenet

REAL = shared_data_root() / "breeds"
HAS_REAL = all((REAL / name).is_file() for name in HIERARCHY_MD5)
pytestmark = pytest.mark.skipif(
    not HAS_REAL,
    reason=f"the BREEDS hierarchy files are not under {REAL} (set BENCH_DATA_ROOT to a folder with breeds/"
    "{class_hierarchy.txt,dataset_class_info.json,node_names.txt})",
)

#: living17 as the robustness library's make_living17 builds it from these files (superclasses; subclasses of the
#: first and the last superclass in the order drawn: the first two are BREEDS' source half, the last two the target).
LIVING17 = (
    "n01629276 n01662784 n01674464 n01726692 n01772222 n01795088 n01816887 n01976957 n02084071 n02114100 "
    "n02118333 n02121808 n02131653 n02164464 n02274259 n02470325 n02484322"
).split()
SALAMANDER = ["n01631663", "n01632777", "n01630670", "n01632458"]  # eft, axolotl, common newt, spotted salamander
MONKEY = ["n02490219", "n02493509", "n02493793", "n02492660"]  # marmoset, titi, spider monkey, howler monkey


@pytest.fixture(scope="module")
def hierarchy():
    return read_hierarchy(REAL)[0]


@pytest.fixture(scope="module")
def living17(hierarchy):
    level, ancestor, per_class = breeds.STANDARD_TASKS["living17"]
    return make_task(hierarchy, level, per_class, ancestor)


def data_root(tmp_path: Path, task, *, n_train: int = 2, n_val: int = 1) -> Path:
    root = tmp_path / "data"
    (root / "breeds").mkdir(parents=True)
    for name in HIERARCHY_MD5:
        shutil.copy(REAL / name, root / "breeds" / name)
    fake_imagenet(root, [w for subs in task.subclasses for w in subs], n_train=n_train, n_val=n_val, size=(20, 24))
    return root


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory, living17):
    return data_root(tmp_path_factory.mktemp("breeds"), living17)


def make(root: Path | None, cache: Path | None = None, **options) -> Breeds:
    options.setdefault("resolution", 16)
    options.setdefault("workers", 1)
    return Breeds(BreedsOptions(**options), data_root=root, cache_dir=cache)


# --------------------------------------------------------------------------------------------------- tasks


def test_standard_tasks_on_the_real_hierarchy(hierarchy):
    sizes = {}
    for name, (level, ancestor, per_class) in breeds.STANDARD_TASKS.items():
        task = make_task(hierarchy, level, per_class, ancestor)
        sizes[name] = (len(task.superclasses), {len(s) for s in task.subclasses})
        flat = [w for s in task.subclasses for w in s]
        assert len(set(flat)) == len(flat)  # disjoint subgroups
        for sc, subs in zip(task.superclasses, task.subclasses, strict=True):
            assert set(subs) <= hierarchy.leaves_reachable(sc) and hierarchy.level[sc] == level
    assert sizes == {"living17": (17, {4}), "entity13": (13, {20}), "entity30": (30, {8}),
                     "nonliving26": (26, {4})}
    assert breeds.STANDARD_TASKS == {"living17": (5, "n00004258", 4), "entity13": (3, None, 20),
                                     "entity30": (4, None, 8), "nonliving26": (5, "n00021939", 4)}


def test_living17_matches_the_published_task(living17, hierarchy):
    assert list(living17.superclasses) == LIVING17
    assert list(living17.subclasses[0]) == SALAMANDER and list(living17.subclasses[-1]) == MONKEY
    names = [breeds.first_name(hierarchy.name(w)) for w in living17.superclasses]
    assert names[:4] == ["salamander", "turtle", "lizard", "snake"] and names[-2:] == ["ape", "monkey"]


def test_custom_tasks(hierarchy):
    t = make_task(hierarchy, 4, 4)
    assert len(t.superclasses) == 57 and {len(s) for s in t.subclasses} == {4}
    t = make_task(hierarchy, 6, 2, "n00004258")
    assert len(t.superclasses) == 14
    with pytest.raises(ConfigError, match="no superclass at level 5 .*has 500 ImageNet classes"):
        make_task(hierarchy, 5, 500)
    with pytest.raises(ConfigError, match="ancestor 'n99999999' is not a node"):
        make_task(hierarchy, 5, 4, "n99999999")


def test_options():
    assert BreedsOptions().task_parameters() == (5, "n00004258", 4)
    assert BreedsOptions(task="custom", level=4).task_parameters() == (4, None, 4)
    assert BreedsOptions(task="custom", level=3, subclasses_per_class=6, ancestor="n00021939").task_parameters() \
        == (3, "n00021939", 6)
    with pytest.raises(ValidationError, match="needs level"):
        BreedsOptions(task="custom")
    with pytest.raises(ValidationError, match="only to task='custom'"):
        BreedsOptions(task="entity13", level=3)
    with pytest.raises(ValidationError, match="only to task='custom'"):
        BreedsOptions(subclasses_per_class=4)
    with pytest.raises(ValidationError):
        BreedsOptions(task="living18")
    opts = BreedsOptions(task="custom", level=4)
    assert BreedsOptions.model_validate(opts.model_dump(mode="json")) == opts
    assert BreedsOptions.model_validate(BreedsOptions().model_dump(mode="json")) == BreedsOptions()
    assert Breeds.paper_defaults == {"filter": {"keep": 0.4}, "loop": {"generations": 4},
                                  "metrics": {"oracle": PAPER_IMAGE_ORACLE}}


# --------------------------------------------------------------------------------------------------- loading


def test_load_living17(fake_root, tmp_path):
    b = make(fake_root, tmp_path / "cache").load()
    assert b.num_classes == 17 and b.subgroup_scope == "per_class" and b.num_subgroups == 4
    assert (len(b.train), len(b.test)) == (136, 68) and b.train.images.shape[1:] == (3, 16, 16)
    counts = np.zeros((17, 4), dtype=int)
    np.add.at(counts, (b.train.labels.numpy(), b.train.subgroups.numpy()), 1)
    assert (counts == 2).all()
    assert b.class_names[0] == "salamander" and b.class_names[8] == "dog"
    assert b.subgroup_names[0] == ("eft", "axolotl", "common newt", "spotted salamander")
    src = b.source
    assert src["task"] == "living17" and src["superclasses"] == LIVING17 and src["subclasses"][0] == SALAMANDER
    assert src["source_subclasses"][0] == SALAMANDER[:2] and src["target_subclasses"][0] == SALAMANDER[2:]
    assert src["hierarchy_md5"] == HIERARCHY_MD5 and src["num_images"] == 204 and len(src["sha256"]) == 64
    json.dumps(src)
    # the image of (class 0, subgroup 1) in train is the decoded JPEG of axolotl's folder
    first = sorted((fake_root / "imagenet" / "train" / SALAMANDER[1]).iterdir())[0]
    i = int(torch.nonzero((b.train.labels == 0) & (b.train.subgroups == 1))[0])
    assert np.array_equal(b.train.images[i].numpy(), _imagefolder.decode_image(first, 16)[0])
    line = make(fake_root).check()
    assert "17 classes × 4 subclasses, 136 train / 68 test images (hierarchy md5 ok)" in line


def test_second_load_reads_shards(fake_root, tmp_path, monkeypatch):
    first = make(fake_root, tmp_path / "cache").load()

    def boom(*args, **kwargs):
        raise AssertionError("decoded a JPEG on a cached load")

    monkeypatch.setattr(_imagefolder, "decode_image", boom)
    second = make(fake_root, tmp_path / "cache").load()
    assert second.source["cache"]["train"]["hit"] and second.source["cache"]["test"]["hit"]
    assert torch.equal(second.train.images, first.train.images) and torch.equal(second.test.images, first.test.images)
    assert (tmp_path / "cache" / "breeds-living17").is_dir()


def test_subsampling_by_subclass(fake_root):
    b = make(fake_root, train_size=68, test_size=34, seed=1).load()
    counts = np.zeros((17, 4), dtype=int)
    np.add.at(counts, (b.train.labels.numpy(), b.train.subgroups.numpy()), 1)
    assert (counts == 1).all() and len(b.test) == 34
    with pytest.raises(ConfigError, match="train_size=137 exceeds the 136"):
        make(fake_root, train_size=137).load()


# --------------------------------------------------------------------------------------------------- errors


def test_missing_class_folder(tmp_path, living17):
    root = data_root(tmp_path, living17, n_train=1, n_val=1)
    shutil.rmtree(root / "imagenet" / "val" / MONKEY[3])
    with pytest.raises(DataError, match=r"breeds living17: 1 of 68 class folders are missing or empty .*"
                                        r"n02492660.*image-net.org"):
        make(root).load()
    shutil.rmtree(root / "imagenet")
    with pytest.raises(DataError, match="no ImageNet under"):
        make(root).check()


def test_hierarchy_md5_and_missing_files(tmp_path):
    info = tmp_path / "breeds"
    info.mkdir()
    for name in HIERARCHY_MD5:
        shutil.copy(REAL / name, info / name)
    (info / "node_names.txt").write_text((info / "node_names.txt").read_text() + "n99999999\textra\n")
    with pytest.raises(DataError, match=r"node_names.txt is corrupt \(md5 [0-9a-f]{32}, expected aca78d3a"):
        make(tmp_path).task()
    assert len(make(tmp_path, verify=False).task().superclasses) == 17
    (info / "class_hierarchy.txt").unlink()
    with pytest.raises(DataError, match=r"missing in .*\(class_hierarchy.txt\); get the BREEDS hierarchy files .*"
                                        r"BREEDS-Benchmarks.*download=true"):
        make(tmp_path).load()
    with pytest.raises(DataError, match="no --data-root"):
        make(None).load()


def test_download_checks_md5(tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(url):
        fetched.append(url.rsplit("/", 1)[1])
        return (REAL / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(breeds, "_fetch", fake_fetch)
    task = make(tmp_path, download=True).task()
    assert len(task.superclasses) == 17 and sorted(fetched) == sorted(HIERARCHY_MD5)
    for name, md5 in HIERARCHY_MD5.items():
        assert hashlib.md5((tmp_path / "breeds" / name).read_bytes()).hexdigest() == md5
    make(tmp_path, download=True).task()
    assert len(fetched) == 3  # present now: nothing fetched again

    monkeypatch.setattr(breeds, "_fetch", lambda url: b"<html>rate limited</html>")
    with pytest.raises(DataError, match=r"downloaded .*class_hierarchy.txt has md5 .*expected 8d208bc4"):
        make(tmp_path / "other", download=True).task()
    assert not (tmp_path / "other" / "breeds" / "class_hierarchy.txt").exists()

    def offline(url):
        raise OSError("network unreachable")

    monkeypatch.setattr(breeds, "_fetch", offline)
    with pytest.raises(DataError, match="downloading .* failed \\(network unreachable\\)"):
        make(tmp_path / "third", download=True).task()


def test_malformed_hierarchy(tmp_path):
    info = tmp_path / "breeds"
    info.mkdir()
    for name in HIERARCHY_MD5:
        shutil.copy(REAL / name, info / name)
    (info / "dataset_class_info.json").write_text("{not json")
    with pytest.raises(DataError, match="malformed"):
        make(tmp_path, verify=False).task()


# --------------------------------------------------------------------------------------------------- end to end


def test_bench_run_breeds_end_to_end(tmp_path, living17):
    from tests.test_cifar import run_bench

    torch.set_num_threads(1)
    root = data_root(tmp_path, living17, n_train=3, n_val=1)
    res = run_bench(tmp_path, root, {"name": "breeds", "options": {"task": "living17", "resolution": 32,
                                                                   "workers": 1}})
    assert res["status"] == "complete" and res["dataset"]["subgroup_scope"] == "per_class"
    assert res["dataset"]["num_classes"] == 17 and res["dataset"]["num_subgroups"] == 4
    assert res["dataset"]["subgroup_names"][0] == ["eft", "axolotl", "common newt", "spotted salamander"]
    for gen in res["generations"]:
        m = gen["classifiers"]["lenet"]["per_seed"][0]
        assert len(m["subgroup_acc"]) == 17 and all(len(row) == 4 for row in m["subgroup_acc"])
        assert m["meo"] is not None and len(m["worst_k"]) == 4
    assert (root / ".cache" / "breeds-living17").is_dir()


def test_bench_run_from_memory_mapped_shards_matches_in_memory(tmp_path, living17, monkeypatch):
    """ImageNet-scale sets are read from memory-mapped cache shards (LazyImages) instead of RAM; the numbers must
    not depend on it. BENCH_IN_MEMORY_GB=0 forces the mapped path on this tiny fixture."""
    from tests.test_cifar import run_bench

    torch.set_num_threads(1)
    root = data_root(tmp_path, living17, n_train=2, n_val=1)
    dataset = {"name": "breeds", "options": {"task": "living17", "resolution": 32, "workers": 1}}
    (tmp_path / "mapped").mkdir()
    (tmp_path / "plain").mkdir()
    monkeypatch.setenv(_imagefolder.ENV_IN_MEMORY, "0")
    mapped = run_bench(tmp_path / "mapped", root, dataset)
    monkeypatch.setenv(_imagefolder.ENV_IN_MEMORY, "4")
    plain = run_bench(tmp_path / "plain", root, dataset)

    def numbers(res):
        return [{k: v for k, v in g.items() if k != "timing"} for g in res["generations"]], res["amplification"]

    assert numbers(mapped) == numbers(plain)
    source = [{k: v for k, v in r["provenance"]["dataset_source"].items() if k != "cache"} for r in (mapped, plain)]
    assert source[0] == source[1]


def test_load_maps_large_sets(fake_root, tmp_path, monkeypatch):
    from harness.imageset import LazyImages

    monkeypatch.setenv(_imagefolder.ENV_IN_MEMORY, "0")
    mapped = make(fake_root, tmp_path / "cache").load()
    monkeypatch.setenv(_imagefolder.ENV_IN_MEMORY, "1")
    plain = make(fake_root, tmp_path / "cache").load()
    assert isinstance(mapped.train.images, LazyImages) and mapped.train.lazy and not plain.train.lazy
    assert torch.equal(mapped.train.images[:], plain.train.images)
    assert mapped.train.sha256() == plain.train.sha256()
    monkeypatch.setenv(_imagefolder.ENV_IN_MEMORY, "lots")
    with pytest.raises(DataError, match="BENCH_IN_MEMORY_GB='lots' is not a number"):
        make(fake_root, tmp_path / "cache").load()
