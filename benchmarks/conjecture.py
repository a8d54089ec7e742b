"""The A_t conjecture, designed: pool a finished sweep of runs into one SPEC §5 fit, print it, draw it, store it.

    .venv/bin/python benchmarks/conjecture.py /tmp/conjecture                 # a sweep folder (bench sweep --out)
    .venv/bin/python benchmarks/conjecture.py leaderboard/entries/colored-mnist-replay-*.json --no-figure

Every argument is a sweep folder (its ``*/results.json``), a run directory or a results file. The runs must differ
only in their design (the spec paths that vary between them, e.g. ``generator.options.flip`` and ``shift`` of
``configs/conjecture.toml``) and share their seeds: :func:`harness.measure.study.fit_study` resamples seed ``s``
of every run together. Runs that are not complete are left out (and listed).

For the bias measure ``--measure`` (default: the runs' ``metrics.bias``) it recomputes, from every replicate's
metrics, ``B_t``, ``A_t`` with intervals and the SPEC §5b verdict of each design point (the paired effect Δ of B,
treated minus control twin), and fits ``log A = log c_M + log(1 + a (1 − q) + b u)`` pooled over all runs:

- ``all``: ``A_t = B_{t+1} / B_t`` of every generation (the SPEC §5 fit, pooled);
- ``t=0``, ``t=1``, ...: each generation's ``A_t`` alone (is the factor the same at every generation?);
- ``paired``: the paired factor ``B̄(f_t) / B̄(f_t^control)``, t ≥ 1 (what the synthetic data did, without the
  change of training budget between generations), when the runs have a control arm.

It writes a table on stdout (design, measured q and u, B_t, A_t, verdict; the fits); ``--figure`` (default
``docs/img/conjecture.png``): for ``all`` and ``paired``, the measured factor against 1 − q at each u level and
against u at each 1 − q level with the fitted surface, and the residuals; ``--json`` (default
``leaderboard/studies/conjecture.json``): the fits, their points and the per-run numbers and verdicts.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.errors import BenchError
from harness.measure.amplification import amplification_intervals, bias_value
from harness.measure.study import StudyFit, StudyRun, fit_study
from harness.measure.verdict import verdict
from harness.publish.results import Results, load_results
from harness.scale.sweep import flatten

MEASURES = ("1-meo", "md", "gap")


# --------------------------------------------------------------------------------------------------- reading


def results_paths(args: Iterable[str]) -> list[Path]:
    """The results files named by sweep folders, run directories or files, in order, without repeats."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_file():
            found = [p]
        elif (p / "results.json").is_file():
            found = [p / "results.json"]
        elif p.is_dir():
            found = sorted(p.glob("*/results.json"))
        else:
            raise BenchError(f"{p}: no such file or folder")
        if not found:
            raise BenchError(f"{p}: no results.json in it or in its subfolders (is the sweep started?)")
        out += [f for f in found if f not in out]
    return out


def design_keys(specs: list[dict[str, Any]]) -> list[str]:
    """The spec paths whose values differ between the runs, in the order of the first spec."""
    flat = [flatten(s) for s in specs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]


def _order(v: Any) -> tuple[int, float, str]:
    """Sort key of a design value: numbers by value, then anything else by its JSON text."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, json.dumps(v, sort_keys=True))


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def study_run(r: Results, measure: str, keys: list[str]) -> tuple[StudyRun, dict[str, np.ndarray], np.ndarray]:
    """The run as a :class:`StudyRun` (B of ``measure`` per classifier, seed, replicate, generation; q; u), the B of
    its control twins per classifier ``(seed, replicate, t = 1..T)`` (NaN without a control arm) and its paired
    Δ(B), ``(classifier, seed, replicate, t = 1..T)``."""
    seeds = list(r.spec["seeds"])
    R = int(r.spec["training"]["replicates"])
    T = r.last_generation
    names = list(r.generations[0].classifiers)
    bias = {m: np.full((len(seeds), R, T + 1), np.nan) for m in names}
    control_bias = {m: np.full((len(seeds), R, T), np.nan) for m in names}
    delta = np.full((len(names), len(seeds), R, T), np.nan)
    q = np.full((len(seeds), T), np.nan)
    u = np.full((len(seeds), T), np.nan)
    for g in r.generations:
        t = g.generation
        for mi, m in enumerate(names):
            rec = g.classifiers[m]
            for p in rec.per_seed:
                bias[m][seeds.index(p.seed), p.replicate, t] = _nan(bias_value(p.model_dump(), measure))
            if t > 0:
                control = {(p.seed, p.replicate): p for p in rec.control}
                for p in rec.per_seed:
                    c = control.get((p.seed, p.replicate))
                    if c is None:
                        continue
                    bt, bc = bias_value(p.model_dump(), measure), bias_value(c.model_dump(), measure)
                    control_bias[m][seeds.index(p.seed), p.replicate, t - 1] = _nan(bc)
                    if bt is not None and bc is not None:
                        delta[mi, seeds.index(p.seed), p.replicate, t - 1] = bt - bc
        if t > 0 and g.generator is not None:
            for p in g.generator.per_seed:
                q[seeds.index(p.seed), t - 1] = p.q
                u[seeds.index(p.seed), t - 1] = _nan(p.u)
    flat = flatten(r.spec)
    design = {k.split(".")[-1]: float(flat[k]) for k in keys if isinstance(flat.get(k), int | float)}
    return StudyRun(label=r.run_id, bias=bias, q=q, u=u, design=design), control_bias, delta


def read_study(paths: list[Path], measure: str | None) -> dict[str, Any]:
    """Load the complete runs, check they can be pooled, and turn them into study runs."""
    loaded, skipped = [], []
    for p in paths:
        r = load_results(p)
        (loaded if r.status == "complete" else skipped).append((p, r))
    if not loaded:
        raise BenchError("no complete run among the results given")
    keys = design_keys([r.spec for _, r in loaded]) if len(loaded) > 1 else []
    loaded.sort(key=lambda pr: [_order(flatten(pr[1].spec).get(k)) for k in keys])
    results = [r for _, r in loaded]
    seeds = {tuple(r.spec["seeds"]) for r in results}
    if len(seeds) > 1:
        raise BenchError(f"the runs have different seeds {sorted(seeds)}: a study resamples the same seeds in "
                         "every run")
    measures = {r.spec["metrics"]["bias"] for r in results}
    measure = measure or (measures.pop() if len(measures) == 1 else "1-meo")
    runs, controls, deltas = zip(*(study_run(r, measure, keys) for r in results), strict=True)
    return {"results": results, "paths": [p for p, _ in loaded], "skipped": [p for p, _ in skipped],
            "design_keys": keys, "measure": measure, "runs": list(runs), "controls": list(controls),
            "deltas": list(deltas)}


def paired_runs(study: dict[str, Any]) -> list[StudyRun]:
    """The paired factor ``B̄(f_t) / B̄(f_t^c)`` (treated over control twin, t ≥ 1) as study runs: one per run and
    generation, whose two "generations" are the control and the treated arm, so that ``A_0`` of each is the
    paired factor and its q, u are those of the data the treated arm trained on. Seed ``s`` stays one unit
    across all of them."""
    out = []
    for run, control in zip(study["runs"], study["controls"], strict=True):
        T = run.q.shape[1]
        for t in range(1, T + 1):
            bias = {m: np.stack([control[m][:, :, t - 1], B[:, :, t]], axis=-1) for m, B in run.bias.items()}
            if all(np.isnan(b[..., 0]).all() for b in bias.values()):
                continue  # no control arm
            out.append(StudyRun(label=f"{run.label} t={t}", bias=bias, q=run.q[:, t - 1:t], u=run.u[:, t - 1:t],
                                design={**run.design, "generation": float(t)}))
    return out


# --------------------------------------------------------------------------------------------------- analysis


def per_run_numbers(study: dict[str, Any]) -> list[dict[str, Any]]:
    """For every run and classifier: design, measured q and u, B_t and A_t with intervals, the verdict."""
    out = []
    for r, run, delta in zip(study["results"], study["runs"], study["deltas"], strict=True):
        vs = r.spec["metrics"]["verdict"]
        T = delta.shape[-1]
        k = vs.get("last_generations")
        gens = list(range(1, T + 1)) if k is None else list(range(max(1, T - k + 1), T + 1))
        for mi, (m, B) in enumerate(run.bias.items()):
            B_iv, A_iv, bar_iv = amplification_intervals(B, resamples=vs["resamples"])
            v = verdict(delta[mi], epsilon=vs["epsilon"], generations=gens, resamples=vs["resamples"],
                        measure=study["measure"]) if T else None
            gen = r.generations[1:]
            out.append({
                "run": r.run_id, "classifier": m, "design": dict(run.design),
                "q": [g.generator.mean.q.model_dump() for g in gen],
                "u": [g.generator.mean.u.model_dump() for g in gen],
                "acc": [g.classifiers[m].mean.acc.mean for g in r.generations],
                "B": [iv.model_dump() for iv in B_iv],
                "A": [iv.model_dump() for iv in A_iv],
                "A_bar": bar_iv.model_dump(),
                "verdict": v.model_dump() if v is not None else None,
                "wall_s": r.timing.total_s,
            })
    return out


def fits(study: dict[str, Any], n_boot: int) -> dict[str, StudyFit]:
    """The pooled fit of A_t over every generation (``all``) and over each generation's alone (``t=0``, ...), and
    of the paired factor B̄(f_t) / B̄(f_t^c) over every generation ``t ≥ 1`` (``paired``)."""
    T = study["runs"][0].q.shape[1]
    out = {"all": fit_study(study["runs"], n_boot=n_boot)}
    if T > 1:
        out |= {f"t={t}": fit_study(study["runs"], generations=[t], n_boot=n_boot) for t in range(T)}
    paired = paired_runs(study)
    if paired:
        out["paired"] = fit_study(paired, n_boot=n_boot)
    return out


# --------------------------------------------------------------------------------------------------- output


def _iv(x: Mapping[str, Any] | None, fmt: str = "{:.3f}") -> str:
    if x is None or x.get("estimate", x.get("mean")) is None:
        return "—"
    est = x.get("estimate", x.get("mean"))
    lo, hi = x.get("ci_low"), x.get("ci_high")
    return fmt.format(est) + (f" [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None else "")


def table(study: dict[str, Any], numbers: list[dict[str, Any]], fitted: dict[str, StudyFit]) -> str:
    keys = [k.split(".")[-1] for k in study["design_keys"]]
    lines = [f"bias measure B = {study['measure']}; {len(study['runs'])} runs; design: {', '.join(keys) or '—'}"]
    if study["skipped"]:
        lines.append(f"left out (not complete): {', '.join(str(p) for p in study['skipped'])}")
    head = [*keys, "classifier", "q", "u", *(f"B_{t}" for t in range(len(numbers[0]["B"]))),
            *(f"A_{t}" for t in range(len(numbers[0]["A"]))), "verdict", "E [lo, hi]", "MDE", "seeds needed"]
    rows = []
    for n in numbers:
        v = n["verdict"] or {}
        rows.append([
            *(f"{n['design'].get(k, float('nan')):g}" for k in keys), n["classifier"],
            " ".join(f"{x['mean']:.3f}" for x in n["q"]), " ".join(f"{x['mean']:.3f}" for x in n["u"]),
            *(_iv(b) for b in n["B"]), *(_iv(a) for a in n["A"]),
            v.get("label", "—"),
            _iv({"estimate": v.get("effect"), "ci_low": v.get("ci_low"), "ci_high": v.get("ci_high")}, "{:+.3f}"),
            f"{v['mde']:.3f}" if v.get("mde") is not None else "—",
            str(v.get("seeds_needed") or "—"),
        ])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    for row in (head, *rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    for name, f in fitted.items():
        lines.append("")
        runs = "(run, generation) pairs" if name == "paired" else "runs"
        lines.append(f"fit of {fit_title(name)} ({f.n_points} points, {f.n_runs} {runs}, {f.n_seeds} seeds × "
                     f"{f.replicates} replicates): {f.status}")
        lines.append(f"  {f.message}")
        if f.status == "identified":
            for m, c in f.c.items():
                lines.append(f"  c[{m}] = {_iv(c.model_dump())}")
            lines.append(f"  a = {_iv(f.a.model_dump())}   b = {_iv(f.b.model_dump())}   R² = {f.r2:.3f}")
            res = np.array([p.residual for p in f.points if p.residual is not None])
            lines.append(f"  residuals (log A − log fitted): sd {res.std():.3f}, max |·| {np.abs(res).max():.3f}")
    return "\n".join(lines)


FIT_TITLES = {
    "all": "A_t = B_t+1 / B_t, every generation",
    "paired": "paired factor B(f_t) / B(f_t^control), t ≥ 1",
}


def fit_title(name: str) -> str:
    return FIT_TITLES.get(name, f"A_{name[2:]} only" if name.startswith("t=") else name)


def figure(study: dict[str, Any], fitted: Mapping[str, StudyFit], path: Path) -> Path:
    """Per fit (a row: ``all``, then ``paired`` when there is a control arm): the measured factor against 1 − q at
    each u level and against u at each 1 − q level, with the fitted surface, and the residuals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k.split(".")[-1] for k in study["design_keys"]]
    q_key = "flip" if "flip" in keys else (keys[0] if keys else None)
    u_key = "shift" if "shift" in keys else (keys[1] if len(keys) > 1 else None)
    rows = [name for name in ("all", "paired") if name in fitted]
    fig, axes = plt.subplots(len(rows), 3, figsize=(15, 4.8 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 0.8]})
    markers = ["o", "s", "^", "D", "v"]
    for row, name in zip(axes, rows, strict=True):
        _figure_row(row, fitted[name], name, study["measure"], q_key, u_key, markers)
    fig.suptitle("The A_t conjecture on a designed grid: points are means over seeds with 95% intervals, lines the "
                 "fitted surface c (1 + a (1 − q) + b u)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _figure_row(axes, fit: StudyFit, name: str, measure: str, q_key: str | None, u_key: str | None,
                markers: list[str]) -> None:
    import matplotlib.pyplot as plt

    paired = name == "paired"
    pts = [p for p in fit.points if p.A.estimate is not None]
    classifier = pts[0].classifier if pts else ""

    def gen(p) -> int:  # the generation t of the point's factor (A_t, or the paired factor at t)
        return int(p.design["generation"]) if paired else p.t

    def gen_label(t: int) -> str:
        return f"t = {t}" if paired else f"A_{t}"

    ylabel = (f"B(f_t) / B(f_t^control)   (B = {measure})" if paired else f"A_t = B_t+1 / B_t   (B = {measure})")
    identified = fit.status == "identified"

    def panel(ax, x_of, group_key, other_of, surface, xlabel):
        levels = sorted({p.design.get(group_key) for p in pts}) if group_key else [None]
        gens = sorted({gen(p) for p in pts})
        span = max((x_of(p) for p in pts), default=0.0) or 1.0
        cmap = plt.get_cmap("viridis")
        for i, level in enumerate(levels):
            colour = cmap(i / max(len(levels) - 1, 1) * 0.85)
            group = [p for p in pts if group_key is None or p.design.get(group_key) == level]
            for p in group:
                lo, hi = p.A.ci_low, p.A.ci_high
                err = None if lo is None else [[p.A.estimate - lo], [hi - p.A.estimate]]
                # side by side: points at one design value are drawn a little apart (level, then generation)
                slot = i * len(gens) + gens.index(gen(p)) - (len(levels) * len(gens) - 1) / 2
                ax.errorbar(x_of(p) + 0.006 * span * slot, p.A.estimate, yerr=err,
                            fmt=markers[gen(p) % len(markers)], color=colour, ms=6, capsize=2, alpha=0.85, lw=1)
            if identified and group:
                xs = np.linspace(0.0, max(x_of(p) for p in pts) * 1.05 + 1e-3, 50)
                ax.plot(xs, surface(xs, float(np.mean([other_of(p) for p in group]))), color=colour, lw=1.5)
            if level is not None:
                ax.plot([], [], color=colour, lw=4, label=f"{group_key} = {level:g}")
        for t in sorted({gen(p) for p in pts}):
            ax.plot([], [], markers[t % len(markers)], color="k", label=gen_label(t))
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlim(left=-0.01)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)

    panel(axes[0], _x1, u_key, _x2, lambda x, u: fit.predict(classifier, x, u),
          "1 − q_t  (label infidelity: 1 − the oracle's agreement)")
    panel(axes[1], _x2, q_key, _x1, lambda x, x1: fit.predict(classifier, x1, x),
          "u_t  (unbalanced generation: TV distance of the colour mix)")
    ax = axes[2]
    if identified:
        for t in sorted({gen(p) for p in pts}):
            group = [p for p in pts if gen(p) == t]
            ax.plot([p.fitted for p in group], [p.residual for p in group], markers[t % len(markers)],
                    color=f"C{t}", alpha=0.85, label=gen_label(t))
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("fitted factor c (1 + a (1 − q) + b u)")
        ax.set_ylabel("residual: log measured − log fitted")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(f"residuals; c = {fit.c[classifier].estimate:.2f}, a = {fit.a.estimate:.2f}, "
                     f"b = {fit.b.estimate:.2f}\nR² = {fit.r2:.2f}, n = {fit.n_points} points ({fit.status})",
                     fontsize=9)
    else:
        text = textwrap.fill(f"{fit_title(name)}: fit {fit.status}. {fit.message}", width=55)
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
    axes[0].set_title(fit_title(name), fontsize=10)


def _x1(p) -> float:
    return 1.0 - p.q


def _x2(p) -> float:
    return p.u


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def document(study: dict[str, Any], numbers: list[dict[str, Any]], fitted: dict[str, StudyFit]) -> dict[str, Any]:
    results = study["results"]
    first = results[0]
    return {
        "what": "SPEC §5 fit pooled over the runs of a designed study (benchmarks/conjecture.py)",
        "measure": study["measure"],
        "design_keys": study["design_keys"],
        "runs": [{"run_id": r.run_id, "spec_hash": r.spec_hash, "file": _shown(p)}
                 for r, p in zip(results, study["paths"], strict=True)],
        "left_out": [_shown(p) for p in study["skipped"]],
        "seeds": list(first.spec["seeds"]),
        "replicates": first.spec["training"]["replicates"],
        "generations": first.spec["loop"]["generations"],
        "wall_s_sum_of_runs": sum(r.timing.total_s for r in results),
        "machine": {"platform": first.provenance.platform, "device": first.provenance.device,
                    "torch_threads": sorted({t for r in results for t in r.provenance.torch_threads}),
                    "python": platform.python_version()},
        "fits": {name: f.model_dump(mode="json") for name, f in fitted.items()},
        "per_run": numbers,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="sweep folders, run directories or results files")
    ap.add_argument("--measure", choices=MEASURES, default=None, help="bias measure B (default: the runs')")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the seeds for the fits")
    ap.add_argument("--figure", type=Path, default=REPO / "docs" / "img" / "conjecture.png")
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--json", type=Path, default=REPO / "leaderboard" / "studies" / "conjecture.json")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    try:
        study = read_study(results_paths(args.paths), args.measure)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    numbers = per_run_numbers(study)
    fitted = fits(study, args.n_boot)
    print(table(study, numbers, fitted))
    if not args.no_figure:
        print(f"figure: {figure(study, fitted, args.figure)}", file=sys.stderr)
    if not args.no_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document(study, numbers, fitted), indent=1, allow_nan=False) + "\n")
        print(f"fit: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
