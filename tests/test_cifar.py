"""CIFAR-20 / CIFAR-100 dataset plugins on fixtures in torchvision's exact on-disk format (bytes-keyed pickles)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from harness.errors import ConfigError, DataError
from harness.specs import PAPER_IMAGE_ORACLE
from plugins.datasets import cifar
from plugins.datasets.cifar import CIFAR20, CIFAR100, CIFAR100Options, CIFAROptions, Imbalance

#: The standard fine → coarse table of CIFAR-100 (the widely used ``sparse2coarse`` array), written out here
#: independently of the plugin's name table.
SPARSE2COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]  # fmt: skip
FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2"
).split()


def write_cifar(root: Path, *, n_train: int = 10, n_test: int = 2, seed: int = 0, coarse=None, protocol: int = 2,
                fine_names=None) -> dict:
    """``root/cifar-100-python/{train,test,meta}`` as the real files: pickled dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    table = SPARSE2COARSE if coarse is None else coarse
    out = {}
    for split, per in (("train", n_train), ("test", n_test)):
        fine = rng.permutation(np.repeat(np.arange(100), per))
        data = rng.integers(0, 256, (fine.size, 3072), dtype=np.uint8)
        d = {
            b"filenames": [f"img_{i}.png".encode() for i in range(fine.size)],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": [table[f] for f in fine],
            b"data": data,
        }
        (folder / split).write_bytes(pickle.dumps(d, protocol=protocol))
        out[split] = (data, fine)
    meta = {b"fine_label_names": [n.encode() for n in (fine_names or FINE)],
            b"coarse_label_names": [n.encode() for n in COARSE]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return out


@pytest.fixture
def fixture_md5(monkeypatch):
    """Make the fixture files the 'official' ones, so verify=True passes on them."""

    def apply(root: Path) -> None:
        folder = root / "cifar-100-python"
        table = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in cifar.FILES_MD5}
        monkeypatch.setattr(cifar, "FILES_MD5", table)

    return apply


@pytest.fixture
def root(tmp_path, fixture_md5):
    arrays = write_cifar(tmp_path)
    fixture_md5(tmp_path)
    return tmp_path, arrays


def make20(root: Path | None, **options) -> CIFAR20:
    return CIFAR20(CIFAROptions(**options), data_root=root)


def make100(root: Path | None, **options) -> CIFAR100:
    return CIFAR100(CIFAR100Options(**options), data_root=root)


# --------------------------------------------------------------------------------------------------- tables


def test_constants_match_torchvision():
    from torchvision.datasets import CIFAR100 as TV

    assert cifar.BASE_FOLDER == TV.base_folder and cifar.URL == TV.url and cifar.TGZ_MD5 == TV.tgz_md5
    assert dict(TV.train_list + TV.test_list) | {TV.meta["filename"]: TV.meta["md5"]} == cifar.FILES_MD5


def test_standard_superclass_mapping():
    assert list(cifar.FINE_LABEL_NAMES) == FINE and list(cifar.COARSE_LABEL_NAMES) == COARSE
    assert list(cifar.COARSE_OF_FINE) == SPARSE2COARSE
    # the subgroups of a superclass are its fine classes in ascending fine-label order
    for c in range(20):
        members = [f for f in range(100) if SPARSE2COARSE[f] == c]
        assert [cifar.SUBGROUP_OF_FINE[f] for f in members] == [0, 1, 2, 3, 4]
        assert tuple(FINE[f] for f in members) == cifar.SUPERCLASSES[c][1]


# --------------------------------------------------------------------------------------------------- cifar20


def test_cifar20_labels_subgroups_and_pixels(root):
    path, arrays = root
    b = make20(path).load()
    data, fine = arrays["train"]
    assert b.train.images.shape == (1000, 3, 32, 32) and b.test.images.shape == (200, 3, 32, 32)
    assert b.train.labels.tolist() == [SPARSE2COARSE[f] for f in fine]
    sub = b.train.subgroups.numpy()
    for i in range(50):
        members = [f for f in range(100) if SPARSE2COARSE[f] == SPARSE2COARSE[fine[i]]]
        assert sub[i] == members.index(fine[i])
    # 1024 red, 1024 green, 1024 blue, each a row-major 32×32 image
    img = data[7].reshape(3, 32, 32)
    assert torch.equal(b.train.images[7], torch.from_numpy(img))
    assert b.train.images[7, 1, 0, 0].item() == data[7, 1024]
    assert b.train.images[7, 2, 1, 3].item() == data[7, 2048 + 35]
    assert b.subgroup_scope == "per_class" and b.num_classes == 20 and b.num_subgroups == 5
    assert b.class_names[0] == "aquatic mammals" and b.class_names[9] == "large man-made outdoor things"
    assert b.class_names[18] == "vehicles 1"
    assert b.subgroup_names[0] == ("beaver", "dolphin", "otter", "seal", "whale")
    assert b.subgroup_names[1][0] == "aquarium fish" and b.subgroup_names[17][0] == "maple tree"
    counts = np.zeros((20, 5), dtype=int)
    np.add.at(counts, (b.test.labels.numpy(), b.test.subgroups.numpy()), 1)
    assert (counts == 2).all()
    src = b.source
    assert src["source"] == "cifar-100-python" and src["num_images"] == 1200 and src["verified"]
    assert src["md5"] == cifar.FILES_MD5 and len(src["sha256"]) == 64
    json.dumps(src)


def test_cifar20_reads_str_keys_and_any_protocol(tmp_path):
    write_cifar(tmp_path, protocol=5)
    b = make20(tmp_path, verify=False).load()
    assert len(b.train) == 1000
    # the folder itself also works as data_root
    assert len(make20(tmp_path / "cifar-100-python", verify=False).load().test) == 200


def test_coarse_labels_disagreeing_with_the_standard_table(tmp_path):
    wrong = list(SPARSE2COARSE)
    wrong[4] = 1  # beaver is an aquatic mammal (0), not a fish
    write_cifar(tmp_path, coarse=wrong)
    with pytest.raises(DataError, match="maps fine class beaver to coarse label 1, not the standard"):
        make20(tmp_path, verify=False).load()


def test_meta_with_other_names(tmp_path):
    write_cifar(tmp_path, fine_names=FINE[:99] + ["zebra"])
    with pytest.raises(DataError, match="names other classes"):
        make20(tmp_path, verify=False).load()


def test_md5_mismatch(tmp_path):
    write_cifar(tmp_path)  # not the official bytes
    with pytest.raises(DataError, match=r"train is corrupt \(md5 [0-9a-f]{32}, expected 16019d7e"):
        make20(tmp_path).load()
    with pytest.raises(DataError, match="corrupt"):
        make20(tmp_path).check()


def test_malformed_and_hostile_pickles(tmp_path):
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-100-python"

    class Hostile:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test").write_bytes(pickle.dumps({b"data": Hostile()}))
    with pytest.raises(DataError, match="not a CIFAR-100 pickle .*not allowed"):
        make20(tmp_path, verify=False).load()
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-100 pickle"):
        make20(tmp_path, verify=False).load()
    (folder / "test").write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"fine_labels": [0, 1, 2],
                                                b"coarse_labels": [4, 1, 14]}))
    with pytest.raises(DataError, match="expected uint8 N×3072"):
        make20(tmp_path, verify=False).load()


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        make20(tmp_path).load()
    msg = str(err.value)
    assert "CIFAR-100 not found" in msg and "torchvision.datasets.CIFAR100" in msg and "download=True" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="--data-root"):
        make20(None).load()


def test_download_option_calls_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake(root):
        calls.append(root)
        write_cifar(root)

    monkeypatch.setattr(cifar, "download_cifar100", fake)
    assert len(make20(tmp_path / "d", download=True, verify=False).load().train) == 1000
    make20(tmp_path / "d", download=True, verify=False).load()
    assert calls == [tmp_path / "d"]


def test_imbalance_fraction_per_subgroup(root):
    path, arrays = root
    fine_all = arrays["train"][1]
    b = make20(path, imbalance={"fraction": 0.2, "subgroups": [0, 3]}, seed=1).load()
    counts = np.zeros((20, 5), dtype=int)
    np.add.at(counts, (b.train.labels.numpy(), b.train.subgroups.numpy()), 1)
    assert (counts[:, [0, 3]] == 2).all() and (counts[:, [1, 2, 4]] == 10).all()
    assert len(b.test) == 200  # the test set is untouched
    report = b.source["imbalance"]
    assert report["beaver"] == {"fraction": 0.2, "kept": 2, "of": 10} and "dolphin" not in report
    assert len(report) == 40
    # deterministic, and the seed picks which images
    again = make20(path, imbalance={"fraction": 0.2, "subgroups": [0, 3]}, seed=1).load()
    assert torch.equal(again.train.images, b.train.images)
    other = make20(path, imbalance={"fraction": 0.2, "subgroups": [0, 3]}, seed=2).load()
    assert not torch.equal(other.train.images, b.train.images)
    # kept images are real training images of that fine class
    data = arrays["train"][0]
    beaver = {data[i].tobytes() for i in np.flatnonzero(fine_all == 4)}
    kept = b.train.images[(b.train.labels == 0) & (b.train.subgroups == 0)]
    assert all(k.numpy().reshape(-1).tobytes() in beaver for k in kept)


def test_imbalance_explicit_fine_classes(root):
    path, _ = root
    b = make20(path, imbalance={"fine_classes": {"Maple Tree": 0.0, "otter": 0.55}}).load()
    counts = np.zeros((20, 5), dtype=int)
    np.add.at(counts, (b.train.labels.numpy(), b.train.subgroups.numpy()), 1)
    assert counts[17, 0] == 0 and counts[0, 2] == 6 and counts.sum() == 1000 - 10 - 4  # round half up: 5.5 → 6
    assert b.source["imbalance"] == {"maple_tree": {"fraction": 0.0, "kept": 0, "of": 10},
                                     "otter": {"fraction": 0.55, "kept": 6, "of": 10}}


def test_imbalance_validation():
    with pytest.raises(ValidationError, match="either fraction"):
        Imbalance()
    with pytest.raises(ValidationError, match="either fraction"):
        Imbalance(fraction=0.1, fine_classes={"otter": 0.1})
    with pytest.raises(ValidationError, match="positions in 0..4"):
        Imbalance(fraction=0.1, subgroups=[5])
    with pytest.raises(ValidationError, match="unknown CIFAR-100 fine class 'zebra'"):
        Imbalance(fine_classes={"zebra": 0.1})
    with pytest.raises(ValidationError, match=r"in \[0, 1\]"):
        Imbalance(fine_classes={"otter": 1.5})
    with pytest.raises(ValidationError):
        Imbalance(fraction=1.2)
    with pytest.raises(ValidationError):
        CIFAROptions(imbalance={"fraction": 0.1, "subgroup": [0]})  # typo
    opts = CIFAROptions(imbalance={"fraction": 0.1})
    assert opts.imbalance.subgroups == (0,)
    assert CIFAROptions.model_validate(opts.model_dump(mode="json")) == opts


def test_subsampling_is_stratified_by_fine_class(root):
    path, _ = root
    b = make20(path, train_size=500, test_size=100).load()
    counts = np.zeros((20, 5), dtype=int)
    np.add.at(counts, (b.train.labels.numpy(), b.train.subgroups.numpy()), 1)
    assert (counts == 5).all() and b.test.class_counts(20).tolist() == [5] * 20
    with pytest.raises(ConfigError, match="train_size=1001 exceeds"):
        make20(path, train_size=1001).load()


def test_cifar100_groups(root):
    path, arrays = root
    b = make100(path).load()
    assert b.num_classes == 100 and b.class_names[1] == "aquarium fish"
    assert b.train.labels.tolist() == arrays["train"][1].tolist()
    assert b.subgroup_scope == "global" and b.subgroup_names == ("all",) and int(b.train.subgroups.abs().sum()) == 0
    s = make100(path, groups="superclass").load()
    assert s.subgroup_scope == "global" and s.num_subgroups == 20 and s.subgroup_names[0] == "aquatic mammals"
    assert s.train.subgroups.tolist() == [SPARSE2COARSE[f] for f in arrays["train"][1]]
    assert "100 classes, global subgroups G = 1" in make100(path).check()


def test_check_and_registration(root):
    path, _ = root
    line = make20(path).check()
    assert "1000 train / 200 test" in line and "20 classes, per-class subgroups G = 5" in line and "md5 ok" in line
    from harness.plugin.manager import create_plugin_manager

    import plugins.datasets as builtin

    pm = create_plugin_manager(extra_plugins=(builtin,), load_entry_points=False)
    assert pm.registry("datasets").get("cifar20")[0] is CIFAR20
    assert pm.registry("datasets").get("cifar100")[0] is CIFAR100
    assert CIFAR20.paper_defaults == {"filter": {"keep": 0.7}, "loop": {"generations": 10},
                                  "metrics": {"oracle": PAPER_IMAGE_ORACLE}}


# --------------------------------------------------------------------------------------------------- CLI


def test_data_check_on_an_empty_folder(tmp_path):
    from harness.cli import app

    r = CliRunner().invoke(app, ["data", "check", "cifar20", "--data-root", str(tmp_path)])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "CIFAR100" in lines[0] and "download" in lines[0], r.output


def tiny_run_config(dataset: dict) -> dict:
    return {
        "dataset": dataset,
        "generator": {"name": "dcgan", "options": {"width": 8, "epochs": 1}},
        "classifiers": ["lenet"],
        "filter": {"name": "none"},
        "loop": {"generations": 1, "samples_per_generation": 50},
        "training": {"max_epochs": 1},
        "metrics": {"fid": {"backbone": "none"}, "oracle": {"max_epochs": 1}},
        "seeds": [0],
    }


def run_bench(tmp_path: Path, data_root: Path, dataset: dict) -> dict:
    from harness.cli import app

    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps(tiny_run_config(dataset)))
    r = CliRunner().invoke(app, ["run", "--config", str(cfg), "--data-root", str(data_root), "--out",
                                 str(tmp_path / "runs"), "--quiet"])
    assert r.exit_code == 0, r.output
    return json.loads(Path(r.stdout.strip()).read_text())


def test_bench_run_cifar20_end_to_end(tmp_path):
    torch.set_num_threads(1)
    write_cifar(tmp_path / "data", n_train=4, n_test=1)
    res = run_bench(tmp_path, tmp_path / "data", {"name": "cifar20", "options": {
        "verify": False, "imbalance": {"fraction": 0.5, "subgroups": [0]}}})
    assert res["status"] == "complete" and res["dataset"]["subgroup_scope"] == "per_class"
    assert res["dataset"]["num_subgroups"] == 5 and res["dataset"]["train_size"] == 400 - 40
    for gen in res["generations"]:
        m = gen["classifiers"]["lenet"]["per_seed"][0]
        assert len(m["subgroup_acc"]) == 20 and all(len(row) == 5 for row in m["subgroup_acc"])
        assert m["meo"] is not None and len(m["worst_k"]) == 5 and m["variants"] == {}
