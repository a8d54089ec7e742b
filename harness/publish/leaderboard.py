"""The leaderboard: validate, migrate, store, rank and compare results files (SPEC §6).

An *entry* is a results file checked three ways — the pydantic :class:`~harness.publish.results.Results` model, the
committed JSON Schema (``leaderboard/schema.json``) and the cross-field consistency a results file must have
(the spec hash, the generations, the classifiers) — and stored as ``<entries>/<run_id>.json``.

Schema evolution: a file of an older ``schema_version`` is migrated in memory, one version at a time, by the
functions in :data:`MIGRATIONS` (``N → N + 1``), then checked as a current file. ``submit`` stores the migrated
(current) form; ``show``, ``compare`` and ``render`` read old entries through the same migrations. A version with
no migration path, or newer than this bench, is rejected with the file named. A fit written before bench checked
that it is identified (status ``ok``/``failed``) is read as ``not_identified`` (:func:`unchecked_fit`).

Ranking: entries are grouped into *tracks* (:func:`group_tracks`) — the entries that ``compare`` calls a fair
comparison of one another — and ranked only within a track (:func:`ranked_tracks`).

Nothing here prints: the CLI (``harness/cli/leaderboard.py``) formats what these functions return.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import BenchError
from harness.publish.results import SCHEMA_PATH, SCHEMA_VERSION, Results, unchecked_fit

def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added replicates, the control arm, the verdict and bootstrap intervals (issue 13); every field
    it added has a default, so a version-1 document is a version-2 one as it is (no verdict, Student-t intervals
    over seeds, no ``A_t`` intervals)."""
    return doc


#: ``MIGRATIONS[N]`` turns a version-N document (a plain dict) into a version-(N+1) one. Register a function here
#: whenever ``SCHEMA_VERSION`` is bumped; :func:`migrate` chains them and sets ``schema_version`` after each step.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}

DEFAULT_DIR = Path("leaderboard") / "entries"

_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Entry:
    """A validated results file: where it came from, the model, and the version it had on disk."""

    path: Path
    results: Results
    source_version: int
    document: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)  # as read, migrated

    @property
    def migrated(self) -> bool:
        return self.source_version != SCHEMA_VERSION

    @property
    def run_id(self) -> str:
        return self.results.run_id


# --------------------------------------------------------------------------------------------------- reading


def read_document(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read a results file ({exc})") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: <root>: a results file is a JSON object, got {type(data).__name__}")
    return data


def migrate(data: dict[str, Any], source: str | Path = "<document>") -> dict[str, Any]:
    """Bring a document to :data:`SCHEMA_VERSION` through :data:`MIGRATIONS`; the input is not modified."""
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BenchError(f"{source}: schema_version: missing or not an integer (got {version!r}); "
                         f"this bench reads {SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise BenchError(f"{source}: unknown schema_version {version} (this bench reads up to {SCHEMA_VERSION}; "
                         "upgrade bench)")
    doc = unchecked_fit(data)
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise BenchError(f"{source}: unknown schema_version {version} (this bench reads {SCHEMA_VERSION} "
                             f"and has no migration from {version})")
        try:
            doc = step(copy.deepcopy(doc))
        except Exception as exc:  # noqa: BLE001 - a migration failing on odd input is the file's problem
            raise BenchError(f"{source}: cannot migrate schema_version {version} → {version + 1}: {exc}") from None
        version += 1
        doc = {**doc, "schema_version": version}
    return doc


def _loc(parts: Iterable[Any]) -> str:
    text = ".".join(str(p) for p in parts if not (isinstance(p, str) and p.startswith("function-")))
    return text or "<root>"


def _pydantic_problems(data: dict[str, Any]) -> tuple[Results | None, list[str]]:
    from pydantic import ValidationError

    from harness.specs import RunSpec

    def msg(e: Any) -> str:
        return e["msg"].removeprefix("Value error, ")

    try:
        return Results.model_validate(data), []
    except ValidationError as exc:
        errors = exc.errors()
    # ``spec`` is checked by RunSpec in a model validator, whose errors arrive with paths inside the spec
    spec_errors: list[Any] = []
    if isinstance(data.get("spec"), dict):
        try:
            RunSpec.model_validate(data["spec"])
        except ValidationError as inner:
            spec_errors = inner.errors()
    seen = {(tuple(e["loc"]), e["msg"]) for e in spec_errors}
    problems = [f"spec.{_loc(e['loc'])}: {msg(e)}" for e in spec_errors]
    problems += [f"{_loc(e['loc'])}: {msg(e)}" for e in errors if (tuple(e["loc"]), e["msg"]) not in seen]
    return None, problems


def committed_schema() -> dict[str, Any]:
    """The committed ``leaderboard/schema.json``, or the model's own schema where the file is not installed."""
    if SCHEMA_PATH.exists():
        return json.loads(SCHEMA_PATH.read_text())
    from harness.publish.results import json_schema

    return json_schema()


def _jsonschema_problems(data: dict[str, Any]) -> list[str] | None:
    """Problems against the committed JSON Schema; ``None`` when the ``jsonschema`` package is not installed."""
    try:
        import jsonschema
    except ImportError:
        return None
    schema = committed_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_loc(e.absolute_path)}: {e.message} (JSON Schema)" for e in errors]


def spec_digest(spec: dict[str, Any]) -> str:
    """sha256 of the stored spec, exactly as ``RunSpec.spec_hash`` computes it from the normalised spec."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _consistency_problems(r: Results) -> list[str]:
    """What the schema cannot say: the document agrees with itself."""
    problems = []
    if spec_digest(r.spec) != r.spec_hash:
        problems.append("spec_hash: does not match the sha256 of spec (the spec was edited after the run)")
    names = [c["name"] if isinstance(c, dict) else c for c in r.spec.get("classifiers", [])]
    gens = r.spec.get("loop", {}).get("generations")
    if [g.generation for g in r.generations] != list(range(r.last_generation + 1)):
        problems.append(f"generations: expected generations 0..{r.last_generation} in order "
                        f"(last_generation = {r.last_generation}), got {[g.generation for g in r.generations]}")
    if r.status == "complete" and gens is not None and r.last_generation != gens:
        problems.append(f"last_generation: a complete run ends at spec.loop.generations = {gens}, "
                        f"got {r.last_generation}")
    if gens is not None and r.last_generation > gens:
        problems.append(f"last_generation: {r.last_generation} is beyond spec.loop.generations = {gens}")
    for i, g in enumerate(r.generations):
        if sorted(g.classifiers) != sorted(names):
            problems.append(f"generations.{i}.classifiers: expected {names}, got {list(g.classifiers)}")
        if (g.generator is None) != (g.generation == 0):
            problems.append(f"generations.{i}.generator: must be null exactly at generation 0")
    if r.dataset.name != r.spec.get("dataset", {}).get("name"):
        problems.append(f"dataset.name: {r.dataset.name!r} is not spec.dataset.name")
    if r.amplification is not None and sorted(r.amplification.per_classifier) != sorted(names):
        problems.append(f"amplification.per_classifier: expected {names}, got {list(r.amplification.per_classifier)}")
    return problems


@dataclass
class Checked:
    """The outcome of :func:`check_file`: the entry, or every problem found (each ``field.path: message``)."""

    path: Path
    entry: Entry | None
    problems: list[str] = field(default_factory=list)
    schema_checked: bool = True


def check_document(data: dict[str, Any], path: Path) -> Checked:
    """Migrate, then check with the model, the committed JSON Schema and for consistency."""
    source_version = data.get("schema_version")
    doc = migrate(data, path)
    results, problems = _pydantic_problems(doc)
    js = _jsonschema_problems(doc)
    if js:
        seen = {p.split(":", 1)[0] for p in problems}
        problems += [p for p in js if p.split(":", 1)[0] not in seen]
    if results is not None and not problems:
        problems += _consistency_problems(results)
        if not _SAFE_RUN_ID.match(results.run_id):
            problems.append(f"run_id: {results.run_id!r} is not a safe file name (letters, digits, . _ -)")
    entry = Entry(path, results, source_version, doc) if results is not None and not problems else None
    return Checked(path, entry, problems, schema_checked=js is not None)


def check_file(path: Path) -> Checked:
    """Check a results file (a run directory stands for its ``results.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    return check_document(read_document(path), path)


def load_entry(path: Path) -> Entry:
    """Read, migrate and check a results file; :class:`BenchError` naming the file and the first field."""
    checked = check_file(path)
    if checked.entry is None:
        more = f" (+{len(checked.problems) - 1} more)" if len(checked.problems) > 1 else ""
        raise BenchError(f"{path}: {checked.problems[0]}{more}")
    return checked.entry


def load_entries(directory: Path) -> list[Entry]:
    """Every ``*.json`` entry in ``directory``, sorted by file name. A bad entry is an error naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BenchError(f"{directory}: no such leaderboard directory (submit an entry first, or pass --dir)")
    return [load_entry(p) for p in sorted(directory.glob("*.json"))]


def resolve_entry(ref: str, directory: Path = DEFAULT_DIR) -> Entry:
    """``ref`` is a results file, a run directory (holding ``results.json``) or a run_id in ``directory``."""
    path = Path(ref)
    if path.is_dir():
        path = path / "results.json"
    elif not path.exists() and (Path(directory) / f"{ref}.json").exists():
        path = Path(directory) / f"{ref}.json"
    if not path.exists():
        raise BenchError(f"{ref}: not a results file, a run directory or a run_id in {directory}")
    return load_entry(path)


# --------------------------------------------------------------------------------------------------- submitting


def submit(path: Path, directory: Path = DEFAULT_DIR, *, allow_partial: bool = False,
           replace: bool = False) -> tuple[Entry, Path]:
    """Validate ``path`` and store it (in the current schema version) as ``<directory>/<run_id>.json``."""
    from harness.engine.rundir import write_json

    entry = load_entry(path)
    r = entry.results
    if r.status == "partial" and not allow_partial:
        raise BenchError(f"{path}: status is 'partial' (last finished generation {r.last_generation} of "
                         f"{r.spec['loop']['generations']}); finish the run, or pass --allow-partial")
    directory = Path(directory)
    target = directory / f"{r.run_id}.json"
    if not replace:
        if target.exists():
            raise BenchError(f"{path}: run_id {r.run_id!r} is already on the leaderboard ({target}); "
                             "pass --replace to overwrite it")
        for other in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            try:
                other_id = json.loads(other.read_text()).get("run_id")
            except (OSError, ValueError, AttributeError):
                continue
            if other_id == r.run_id:
                raise BenchError(f"{path}: run_id {r.run_id!r} is already on the leaderboard ({other}); "
                                 "pass --replace to overwrite it")
    write_json(target, entry.document)
    return entry, target


# --------------------------------------------------------------------------------------------------- ranking

#: The columns ``show`` and the site rank by, with which direction is better. Final-generation values
#: (seed means) for the metrics; ``A_bar`` per classifier. Lower ``A_bar`` = less bias amplification.
COLUMNS: dict[str, tuple[str, str]] = {
    "A_bar": ("higher = bias amplified across generations", "lower"),
    "acc": ("overall accuracy", "higher"),
    "meo": ("1 − mean TPR gap between subgroups", "higher"),
    "di": ("disparate impact (1 = parity)", "higher"),
    "md": ("maximum TPR disparity", "lower"),
    "worst": ("worst-subgroup accuracy (worst_k[0])", "higher"),
    "dp": ("demographic-parity difference", "lower"),
    "eodds": ("equalized-odds difference", "lower"),
    "q": ("label fidelity of the last generator", "higher"),
    "u": ("unbalanced generation of the last generator", "lower"),
    "fid": ("FID of the last generator", "lower"),
    "kid": ("KID of the last generator", "lower"),
}


def _mean(stat: Any) -> float | None:
    return None if stat is None else stat.mean


def _ci(stat: Any) -> list[float] | None:
    """``[ci_low, ci_high]`` of a ``Stat`` (or anything with those fields), ``None`` where there is no interval."""
    low, high = _field(stat, "ci_low"), _field(stat, "ci_high")
    return None if low is None or high is None else [low, high]


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``; ``None`` when ``obj`` is None or has no such field."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def classifier_names(results: Results) -> list[str]:
    return [c["name"] if isinstance(c, dict) else c for c in results.spec["classifiers"]]


def a_bar_interval(pc: Any) -> list[float] | None:
    """``[low, high]`` of a classifier's ``A_bar`` where the results carry one (``A_bar_interval``, or
    ``A_bar_ci_low``/``A_bar_ci_high``); ``None`` otherwise (files written before issue 13)."""
    found = _ci(_field(pc, "A_bar_interval"))
    if found is not None:
        return found
    low, high = _field(pc, "A_bar_ci_low"), _field(pc, "A_bar_ci_high")
    return None if low is None or high is None else [low, high]


def a_t_intervals(pc: Any) -> list[list[float] | None]:
    """``[low, high]`` of each of a classifier's ``A_t`` (``pc.A``) where the results carry one (``A_interval``,
    one per ``A_t``; or fields on each factor), else ``None`` for it."""
    stored = _field(pc, "A_interval") or []
    if len(stored) == len(pc.A):
        return [_ci(iv) for iv in stored]
    return [_ci(a) for a in pc.A]


def bias_intervals(pc: Any) -> list[list[float] | None] | None:
    """``[low, high]`` of each ``B_t`` of a classifier where the results carry them (``bias_interval``), else
    ``None``."""
    stored = _field(pc, "bias_interval") or []
    return [_ci(iv) for iv in stored] if len(stored) == len(pc.bias) else None


def verdict_of(results: Any, classifier: str | None = None) -> dict[str, Any] | None:
    """The SPEC §5b verdict on ``classifier`` (``None``: pooled over classifiers) as a plain dict — ``label``,
    ``effect``, ``ci_low``, ``ci_high``, ``epsilon``, ``mde``, ``reason`` — or ``None`` when the results carry no
    verdict (a run without a control arm, or written before the verdict existed).

    Reads an optional ``verdict`` block shaped ``{"per_classifier": {name: verdict}, "pooled": verdict}`` (a
    model or a dict), or a plain ``{name: verdict, "pooled": verdict}`` mapping.
    """
    block = getattr(results, "verdict", None)
    if block is None:
        return None
    if classifier is None:
        found = _field(block, "pooled")
    else:
        per = _field(block, "per_classifier")
        found = _field(per if per is not None else block, classifier)
    if found is None or _field(found, "label") is None:
        return None
    return {k: _field(found, k) for k in ("label", "effect", "ci_low", "ci_high", "epsilon", "mde", "reason")}


def entry_rows(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """One row per (entry, classifier): a multi-classifier run is ranked classifier by classifier.

    Metric values are the last generation's seed means; ``ci`` holds each one's 95% interval as stored
    (``None`` where there is none, e.g. with one seed) and ``verdict`` the classifier's verdict or ``None``.
    """
    rows = []
    for e in entries:
        r = e.results
        spec = r.spec
        last = r.generations[-1] if r.generations else None
        gen = last.generator.mean if last is not None and last.generator is not None else None
        for name in classifier_names(r):
            agg = last.classifiers[name].mean if last is not None else None
            amp = r.amplification.per_classifier.get(name) if r.amplification else None
            worst = agg.worst_k[0] if agg is not None and agg.worst_k else None
            ci = {k: _ci(getattr(agg, k)) if agg is not None else None
                  for k in ("acc", "meo", "di", "md", "dp", "eodds")}
            ci.update({k: _ci(getattr(gen, k)) if gen is not None else None for k in ("q", "u", "fid", "kid")})
            ci.update(worst=_ci(worst), A_bar=a_bar_interval(amp))
            rows.append({
                "run_id": r.run_id,
                "file": e.path.name,
                "dataset": r.dataset.name,
                "generator": spec["generator"]["name"],
                "classifier": name,
                "filter": f"{spec['filter']['name']} {spec['filter'].get('keep', 1.0):g}",
                "generation": None if last is None else last.generation,
                "generations": spec["loop"]["generations"],
                "seeds": len(spec["seeds"]),
                "status": r.status,
                "harness": r.provenance.harness_version,
                "acc": _mean(agg and agg.acc),
                "meo": _mean(agg and agg.meo),
                "di": _mean(agg and agg.di),
                "md": _mean(agg and agg.md),
                "worst": _mean(worst),
                "dp": _mean(agg and agg.dp),
                "eodds": _mean(agg and agg.eodds),
                "q": _mean(gen and gen.q),
                "u": _mean(gen and gen.u),
                "fid": _mean(gen and gen.fid),
                "kid": _mean(gen and gen.kid),
                "A_bar": None if amp is None else amp.A_bar,
                "ci": ci,
                "verdict": verdict_of(r, name),
            })
    return rows


def sort_rows(rows: list[dict[str, Any]], by: str = "A_bar", *, reverse: bool = False) -> list[dict[str, Any]]:
    """Best first by ``by`` (its direction in :data:`COLUMNS`), missing values last; adds ``rank``."""
    by = {k.lower(): k for k in COLUMNS}.get(by.lower(), by)
    if by not in COLUMNS:
        import difflib

        close = difflib.get_close_matches(by, COLUMNS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BenchError(f"unknown sort column {by!r}.{hint} Choose from: {', '.join(COLUMNS)}")
    sign = -1.0 if COLUMNS[by][1] == "higher" else 1.0
    if reverse:
        sign = -sign
    present = sorted((r for r in rows if r[by] is not None),
                     key=lambda r: (sign * r[by], r["run_id"], r["classifier"]))
    missing = sorted((r for r in rows if r[by] is None), key=lambda r: (r["run_id"], r["classifier"]))
    out = [dict(r) for r in present + missing]
    for i, r in enumerate(out, 1):
        r["rank"] = i if r[by] is not None else None
    return out


# --------------------------------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class Difference:
    """One way two entries differ. ``fair``: expected (what is being compared), or harmless."""

    category: str
    path: str
    a: Any
    b: Any
    fair: bool


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out or {prefix: []}
    return {prefix: obj}


_MISSING = "<absent>"

#: spec prefix → (category, fair). The first matching prefix wins; the generator and the classifiers are what a
#: comparison compares; everything else changes the experiment.
_SPEC_CATEGORIES: tuple[tuple[str, str, bool], ...] = (
    ("preset", "preset (only fills defaults; the resolved values are compared)", True),
    ("generator", "generator (compared)", True),
    ("classifiers", "classifiers (compared)", True),
    ("dataset", "dataset options", False),
    ("training", "training recipe", False),
    ("filter", "filter / keep", False),
    ("loop", "loop settings", False),
    ("metrics.fid", "FID settings", False),
    ("metrics.oracle", "oracle", False),
    ("metrics", "amplification settings", False),
    ("seeds", "seeds", False),
    ("precision", "precision", False),
)


def _spec_category(path: str) -> tuple[str, bool]:
    for prefix, category, fair in _SPEC_CATEGORIES:
        if path == prefix or path.startswith(prefix + "."):
            return category, fair
    return "spec", False


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    fa, fb = _flatten(a), _flatten(b)
    return [(k, fa.get(k, _MISSING), fb.get(k, _MISSING)) for k in sorted(set(fa) | set(fb))
            if fa.get(k, _MISSING) != fb.get(k, _MISSING)]


def differences(a: Results, b: Results) -> list[Difference]:
    """Every difference in spec and provenance that bears on whether ``a`` and ``b`` are comparable."""
    out: list[Difference] = []
    sa, sb = copy.deepcopy(a.spec), copy.deepcopy(b.spec)
    seeds_a, seeds_b = sa.pop("seeds", []), sb.pop("seeds", [])
    if len(seeds_a) != len(seeds_b):
        out.append(Difference("seeds count", "seeds", len(seeds_a), len(seeds_b), False))
    elif seeds_a != seeds_b:
        out.append(Difference("seeds (same count)", "seeds", seeds_a, seeds_b, True))
    for path, va, vb in _diff(sa, sb):
        category, fair = _spec_category(path)
        out.append(Difference(category, f"spec.{path}", va, vb, fair))

    pa, pb = a.provenance, b.provenance
    if pa.harness_version != pb.harness_version:
        out.append(Difference("harness version", "provenance.harness_version", pa.harness_version,
                              pb.harness_version, False))
    for path, va, vb in _diff(pa.dataset_source, pb.dataset_source):
        if path.split(".")[-1] == "path":
            continue  # where the file lay on the machine; the checksums say whether it is the same file
        category = "dataset source sha256" if "sha256" in path else "dataset source"
        out.append(Difference(category, f"provenance.dataset_source.{path}", va, vb, False))
    for path, va, vb in _diff(pa.fid or {}, pb.fid or {}):
        category = "FID weights sha256" if "sha256" in path else "FID backbone"
        out.append(Difference(category, f"provenance.fid.{path}", va, vb, False))
    if pa.precision != pb.precision:
        out.append(Difference("precision", "provenance.precision", pa.precision, pb.precision, False))
    if pa.device != pb.device:
        out.append(Difference("device (results may differ slightly)", "provenance.device", pa.device,
                              pb.device, True))
    if pa.torch != pb.torch:
        out.append(Difference("torch version", "provenance.torch", pa.torch, pb.torch, True))
    plugins_a = {(p.kind, p.name): p for p in pa.plugins}
    plugins_b = {(p.kind, p.name): p for p in pb.plugins}
    for key in sorted(set(plugins_a) & set(plugins_b)):
        va = (plugins_a[key].distribution, plugins_a[key].version)
        vb = (plugins_b[key].distribution, plugins_b[key].version)
        if va != vb:
            fair = key[0] in ("generators", "classifiers")
            out.append(Difference("plugin version", f"provenance.plugins.{key[0]}.{key[1]}",
                                  "/".join(map(str, va)), "/".join(map(str, vb)), fair))
    if a.dataset.model_dump() != b.dataset.model_dump():
        for path, va, vb in _diff(a.dataset.model_dump(), b.dataset.model_dump()):
            out.append(Difference("dataset", f"dataset.{path}", va, vb, False))
    return out


def unfair(diffs: Sequence[Difference]) -> list[Difference]:
    return [d for d in diffs if not d.fair]


def comparable(a: Results, b: Results) -> bool:
    """Whether ``compare`` calls ``a`` against ``b`` a fair comparison: they differ at most in what is compared."""
    return not unfair(differences(a, b))


# --------------------------------------------------------------------------------------------------- tracks


def _options(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in _flatten(dict(options)).items() if k)


@dataclass(frozen=True)
class Track:
    """Entries that are fair comparisons of one another (:func:`comparable`): the same dataset and options,
    protocol (generations, samples per generation, mixing, filter, training recipe, metric settings, number of
    seeds) and harness; they differ at most in the generator and the classifiers. Ranks mean something only
    within a track."""

    number: int
    entries: tuple[Entry, ...]

    @property
    def id(self) -> str:
        return f"track-{self.number}"

    @property
    def results(self) -> Results:
        """The first entry's results: every setting a track shares is read from it."""
        return self.entries[0].results

    @property
    def seeds(self) -> int:
        return len(self.results.spec["seeds"])

    def summary(self) -> str:
        """One line: the dataset, the generations and their budget, the filter and the seeds."""
        s = self.results.spec
        loop, flt = s["loop"], s["filter"]
        return (f"{s['dataset']['name']} · {loop['generations']} generations × {loop['samples_per_generation']} "
                f"samples · mix {loop['mix_ratio']:g} ({loop['regime']}) · {flt['name']} keep {flt.get('keep', 1.0):g} "
                f"· {self.seeds} seed{'s' if self.seeds != 1 else ''}")

    def protocol(self) -> list[tuple[str, str]]:
        """``(what, settings)``: everything the entries of this track share, as ``compare`` checks it."""
        r = self.results
        s, p = r.spec, r.provenance
        source = {k: v for k, v in p.dataset_source.items() if k in ("source", "sha256", "content_sha256")}
        return [
            ("dataset", f"{s['dataset']['name']} ({_options(s['dataset']['options'])})"),
            ("loop", _options(s["loop"])),
            ("filter", (f"{s['filter']['name']}, keep {s['filter'].get('keep', 1.0):g} "
                        f"({_options(s['filter'].get('options', {}))})")),
            ("training", _options(s["training"])),
            ("metrics", _options(s["metrics"])),
            ("seeds", f"{self.seeds} ({', '.join(map(str, s['seeds']))} in the first entry)"),
            ("precision", f"{s.get('precision')} (ran as {p.precision})"),
            ("dataset source", _options(source)),
            ("harness", p.harness_version),
        ]


def group_tracks(entries: Sequence[Entry]) -> list[Track]:
    """Split ``entries`` into tracks by :func:`comparable` (the test ``bench leaderboard compare`` applies).

    Order: by dataset, then the most seeds, the most generations and the most entries first. Within a track the
    entries keep their order.
    """
    groups: list[list[Entry]] = []
    for e in entries:
        for group in groups:
            if comparable(group[0].results, e.results):
                group.append(e)
                break
        else:
            groups.append([e])

    def order(group: list[Entry]) -> tuple[Any, ...]:
        r = group[0].results
        return (r.dataset.name, -len(r.spec["seeds"]), -r.spec["loop"]["generations"], -len(group), r.run_id)

    return [Track(i, tuple(g)) for i, g in enumerate(sorted(groups, key=order), 1)]


def ranked_tracks(entries: Sequence[Entry], by: str = "A_bar", *,
                  reverse: bool = False) -> list[tuple[Track, list[dict[str, Any]]]]:
    """Every track with its rows (:func:`entry_rows`) ranked within it by :func:`sort_rows`; each row also
    gets ``track`` (the track's number)."""
    sort_rows([], by)  # an unknown column is an error even on an empty board
    out = []
    for track in group_tracks(entries):
        rows = sort_rows(entry_rows(track.entries), by, reverse=reverse)
        out.append((track, [{**r, "track": track.number} for r in rows]))
    return out


def generation_table(a: Results, b: Results, classifier: str,
                     metrics: Sequence[str] = ("acc", "meo", "di", "md", "worst")) -> list[dict[str, Any]]:
    """Per generation: ``{"generation": t, metric: (stat_a | None, stat_b | None)}`` for one classifier."""
    def stats(r: Results, t: int) -> dict[str, Any]:
        if t >= len(r.generations) or classifier not in r.generations[t].classifiers:
            return {}
        agg = r.generations[t].classifiers[classifier].mean
        return {m: (agg.worst_k[0] if agg.worst_k else None) if m == "worst" else getattr(agg, m) for m in metrics}

    rows = []
    for t in range(max(len(a.generations), len(b.generations))):
        sa, sb = stats(a, t), stats(b, t)
        rows.append({"generation": t, **{m: (sa.get(m), sb.get(m)) for m in metrics}})
    return rows


def generator_table(a: Results, b: Results, metrics: Sequence[str] = ("q", "u", "fid")) -> list[dict[str, Any]]:
    def stats(r: Results, t: int) -> dict[str, Any]:
        if t >= len(r.generations) or r.generations[t].generator is None:
            return {}
        return {m: getattr(r.generations[t].generator.mean, m) for m in metrics}

    rows = []
    for t in range(1, max(len(a.generations), len(b.generations))):
        sa, sb = stats(a, t), stats(b, t)
        rows.append({"generation": t, **{m: (sa.get(m), sb.get(m)) for m in metrics}})
    return rows


def amplification_table(a: Results, b: Results, classifier: str) -> tuple[list[dict[str, Any]], tuple[Any, Any]]:
    """Rows ``{"t": t, "A": (A_t of a, A_t of b)}`` and ``(A_bar of a, A_bar of b)`` for one classifier."""
    def amp(r: Results) -> Any:
        return r.amplification.per_classifier.get(classifier) if r.amplification else None

    pa, pb = amp(a), amp(b)
    n = max(len(pa.A) if pa else 0, len(pb.A) if pb else 0)
    rows = []
    for t in range(n):
        va = pa.A[t].value if pa and t < len(pa.A) else None
        vb = pb.A[t].value if pb and t < len(pb.A) else None
        rows.append({"t": t, "A": (va, vb)})
    return rows, (pa.A_bar if pa else None, pb.A_bar if pb else None)
