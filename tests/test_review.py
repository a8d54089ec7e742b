"""The manual filter and ``bench review``: a run stops with exit code 3 and contact sheets, a person decides,
the same command resumes, and the filter keeps exactly the accepted candidates."""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError, ReviewPending
from harness.imageset import ImageSet
from harness.interfaces import FilterContext, Runtime
from harness.plugin.manager import create_plugin_manager
from tests.conftest import tiny_config


class Reporter:
    @contextmanager
    def task(self, description, total):
        yield None


NAMES = ("digit 0", "digit 1", "digit 2")


def make(**options):
    cls, _ = create_plugin_manager().registry("filters").get("manual")
    return cls(cls.Options(**options))


def fake_run(tmp_path: Path, seed: int = 0, t: int = 1, folder: str | None = None) -> tuple[Path, FilterContext]:
    """A run directory (spec.json only) and the filter context of its generation ``t`` of ``seed``; the review
    folder is wherever the harness puts it (``folder``), the filter and ``bench review`` do not care."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "spec.json").write_text("{}")
    review = run_dir / (folder or f"review/seed-{seed}/gen-{t:03d}")
    runtime = Runtime(device="cpu", precision="fp32", seed=0, reporter=Reporter(), workdir=tmp_path / "work")
    return run_dir, FilterContext(generation=t, classifiers=(), class_names=NAMES, runtime=runtime, review_dir=review,
                                  seed=seed, run_dir=run_dir)


def candidates(n: int = 9, channels: int = 1) -> ImageSet:
    images = torch.randint(0, 256, (n, channels, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ImageSet.create(images, torch.arange(n) % 3, origin=1)


def pending(f, cands, ctx) -> str:
    with pytest.raises(ReviewPending) as info:
        f.score(cands, ctx)
    assert info.value.exit_code == 3
    return str(info.value)


def review(*args) -> object:
    return CliRunner().invoke(app, ["review", *map(str, args)])


# ------------------------------------------------------------------ the filter alone


def test_pending_writes_sheets_and_csv(tmp_path):
    run_dir, ctx = fake_run(tmp_path)
    msg = pending(make(tile=16), candidates(), ctx)
    csv_path = ctx.review_dir / "candidates.csv"
    assert msg == (f"generation 1 of seed 0 waits for review: mark rejects in {csv_path} "
                   f"(or run `bench review {run_dir}`), then run the same command again")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["id"] for r in rows] == [str(i) for i in range(9)]
    assert [r["class"] for r in rows] == ["0", "1", "2"] * 3
    assert rows[4]["class_name"] == "digit 1" and all(r["decision"] == "" for r in rows)
    sheets = sorted(p.name for p in ctx.review_dir.glob("sheet-*.png"))
    assert sheets == ["sheet-class-00-digit-0.png", "sheet-class-01-digit-1.png", "sheet-class-02-digit-2.png"]
    from PIL import Image

    with Image.open(ctx.review_dir / sheets[0]) as im:
        assert im.mode == "RGB" and im.width >= 3 * 16 and im.height > 16
    assert not (ctx.review_dir / "decisions.csv").exists()
    info = json.loads((ctx.review_dir / "review.json").read_text())
    assert info == {"filter": "manual", "seed": 0, "generation": 1, "candidates": 9}
    pending(make(tile=16), candidates(), ctx)  # still pending: nobody has decided


def test_sheets_paginate_and_take_colour(tmp_path):
    _, ctx = fake_run(tmp_path)
    pending(make(tile=8, per_sheet=2), candidates(9, channels=3), ctx)
    names = sorted(p.name for p in ctx.review_dir.glob("sheet-class-00-*.png"))
    assert names == ["sheet-class-00-digit-0-p1.png", "sheet-class-00-digit-0-p2.png"]  # 3 images, 2 per page


def test_marked_candidates_csv_resumes_and_becomes_decisions(tmp_path):
    _, ctx = fake_run(tmp_path)
    f, cands = make(), candidates()
    pending(f, cands, ctx)
    path = ctx.review_dir / "candidates.csv"
    rows = list(csv.DictReader(path.open()))
    rows[1]["decision"], rows[5]["decision"], rows[6]["decision"] = "reject", "REJECT", "keep"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "class", "class_name", "decision"])
        w.writeheader()
        w.writerows(rows)
    scores = f.score(cands, ctx)
    assert scores.tolist() == [1, 0, 1, 1, 1, 0, 1, 1, 1]
    mask = f.select(scores, cands.labels, 0.1)  # keep is ignored: exactly the accepted ones
    assert mask.tolist() == [True, False, True, True, True, False, True, True, True]
    text = (ctx.review_dir / "decisions.csv").read_text().splitlines()
    assert text[0] == "id,decision" and text[2] == "1,reject" and text[6] == "5,reject" and len(text) == 10


def test_decisions_file_errors_name_file_and_line(tmp_path):
    _, ctx = fake_run(tmp_path)
    f, cands = make(), candidates()
    ctx.review_dir.mkdir(parents=True)
    path = ctx.review_dir / "decisions.csv"
    for body, message in [
        ("id,decision\n0,keep\n1,maybe\n", "line 3: decision 'maybe'"),
        ("id,decision\n9,reject\n", "id 9 is not a candidate"),
        ("id,decision\n2,reject\n2,keep\n", "id 2 appears twice"),
        ("id,decision\nx,reject\n", "is not an integer"),
        ("ident,verdict\n1,reject\n", "columns id and decision"),
        ("id,class,decision\n1,2,reject\n", "candidate 1 is of class 1, not 2"),
    ]:
        path.write_text(body)
        with pytest.raises(ConfigError, match=message):
            f.score(cands, ctx)
    path.write_text("id,decision\n3,reject\n\n")  # unlisted ids are kept
    assert f.score(cands, ctx).tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 1]


# ------------------------------------------------------------------ bench review


def test_review_lists_and_accepts_all(tmp_path):
    run_dir, ctx = fake_run(tmp_path)
    pending(make(), candidates(), ctx)
    r = review(run_dir)
    assert r.exit_code == 0, r.output
    assert "seed 0 generation 1: 9 candidates" in r.stdout
    assert str(ctx.review_dir / "candidates.csv") in r.stdout
    assert str(ctx.review_dir / "sheet-class-02-digit-2.png") in r.stdout
    r = review(run_dir, "--accept-all")
    assert r.exit_code == 0 and "9 kept, 0 rejected" in r.stdout, r.output
    assert make().score(candidates(), ctx).tolist() == [1.0] * 9
    r = review(run_dir)
    assert r.exit_code == 0 and "no reviews pending" in r.stdout


def test_review_from_csv_and_reject(tmp_path):
    run_dir, ctx = fake_run(tmp_path)
    pending(make(), candidates(), ctx)
    mine = tmp_path / "mine.csv"
    mine.write_text("id,decision\n0,reject\n4,keep\n")
    r = review(run_dir, "--from-csv", mine, "--reject", "7, 8")
    assert r.exit_code == 0 and "6 kept, 3 rejected" in r.stdout, r.output
    assert make().score(candidates(), ctx).tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reject", "12"], "--reject 12: not a candidate"),
        (["--reject", "one"], "--reject expects candidate ids"),
        (["--accept-all", "--reject", "1"], "do not combine"),
        (["--seed", "5", "--accept-all"], "no matching --seed/--generation review is pending"),
    ],
)
def test_review_user_errors(tmp_path, args, message):
    run_dir, ctx = fake_run(tmp_path)
    pending(make(), candidates(), ctx)
    r = review(run_dir, *args)
    assert r.exit_code == 2 and message in r.stderr, r.output


def test_review_needs_a_run_dir_and_a_choice_between_pending_reviews(tmp_path):
    r = review(tmp_path / "nowhere")
    assert r.exit_code == 2 and "is not a run directory" in r.stderr
    run_dir, ctx0 = fake_run(tmp_path, seed=0)
    _, ctx1 = fake_run(tmp_path, seed=1)
    pending(make(), candidates(), ctx0)
    pending(make(), candidates(), ctx1)
    r = review(run_dir, "--reject", "1")
    assert r.exit_code == 2 and "2 reviews are pending" in r.stderr
    r = review(run_dir, "--seed", "1", "--generation", "1", "--reject", "1")
    assert r.exit_code == 0 and "seed 1 generation 1" in r.stdout, r.output
    assert not (ctx0.review_dir / "decisions.csv").exists() and (ctx1.review_dir / "decisions.csv").exists()


def test_review_reads_review_json_not_the_folder_path(tmp_path):
    run_dir, ctx = fake_run(tmp_path, seed=7, t=2, folder="elsewhere/any-name")
    msg = pending(make(), candidates(), ctx)
    assert "generation 2 of seed 7 waits for review" in msg and f"bench review {run_dir}`" in msg
    r = review(run_dir)
    assert r.exit_code == 0 and "seed 7 generation 2: 9 candidates" in r.stdout, r.output
    r = review(run_dir, "--seed", "7", "--generation", "2", "--reject", "0")
    assert r.exit_code == 0 and "8 kept, 1 rejected" in r.stdout, r.output
    (ctx.review_dir / "review.json").write_text("{not json")
    r = review(run_dir)
    assert r.exit_code == 2 and "review.json is damaged" in r.stderr, r.output


def test_review_is_the_manual_filters_command():
    """``bench review`` comes from the filter package's register_commands hook; the core has no review module."""
    import importlib.util

    import plugins.filters
    from harness.plugin.manager import create_plugin_manager as fresh

    assert importlib.util.find_spec("harness.cli.review") is None
    impls = fresh().pm.hook.register_commands.get_hookimpls()
    assert [i.plugin for i in impls] == [plugins.filters]
    assert any(c.name == "review" and c.callback.__module__ == "plugins.filters.manual"
               for c in app.registered_commands)


# ------------------------------------------------------------------ end to end


def test_manual_review_round_trip(tmp_path):
    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps(tiny_config(
        dataset={"options": {"train_size": 200, "test_size": 100}},
        filter={"name": "manual"},
        loop={"generations": 1, "samples_per_generation": 40},
        device="cpu",
        precision="fp32",  # CPU bf16 autocast is emulated (slow) on CPUs without bf16 instructions
    )))
    runs = tmp_path / "runs"
    cmd = ["run", "--config", str(cfg), "--out", str(runs), "--quiet"]
    r = CliRunner().invoke(app, cmd)
    assert r.exit_code == 3, r.output
    assert "generation 1 of seed 0 waits for review: mark rejects in" in r.stderr
    assert "then run the same command again" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    rdir = run_dir / "review" / "seed-0" / "gen-001"
    assert f"bench review {run_dir}" in r.stderr and str(rdir / "candidates.csv") in r.stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "partial"
    rows = list(csv.DictReader((rdir / "candidates.csv").open()))
    assert len(rows) == 40
    classes = sorted({int(row["class"]) for row in rows})
    assert sorted(rdir.glob("sheet-*.png")) and len(list(rdir.glob("sheet-*.png"))) == len(classes)

    listing = review(run_dir)
    assert listing.exit_code == 0 and str(rdir / "candidates.csv") in listing.stdout
    assert all(str(p) in listing.stdout for p in rdir.glob("sheet-*.png"))

    # reject every candidate of the first class, and two more of other classes
    first = classes[0]
    rejected = [int(row["id"]) for row in rows if int(row["class"]) == first]
    rejected += [int(row["id"]) for row in rows if int(row["class"]) != first][:2]
    r = review(run_dir, "--reject", ",".join(map(str, rejected)))
    assert r.exit_code == 0 and f"{40 - len(rejected)} kept, {len(rejected)} rejected" in r.stdout, r.output

    r = CliRunner().invoke(app, cmd)
    assert r.exit_code == 0, r.output
    assert Path(r.stdout.strip()) == run_dir / "results.json"
    assert json.loads((run_dir / "results.json").read_text())["status"] == "complete"
    result = json.loads((run_dir / "seed-0" / "gen-001" / "filter" / "result.json").read_text())
    expected = [0] * 10
    for row in rows:
        if int(row["id"]) not in rejected:
            expected[int(row["class"])] += 1
    assert result["kept_per_class"] == expected and result["kept"] == 40 - len(rejected)
    assert result["kept_per_class"][first] == 0
    from harness.engine.rundir import load_tensors

    kept = load_tensors(run_dir / "seed-0" / "gen-001" / "filter" / "filtered.safetensors")["index"].tolist()
    assert kept == sorted(set(range(40)) - set(rejected))
