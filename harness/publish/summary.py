"""A human summary of a results file, for stderr. Every name in it comes from the results file and is printed as
text, never read as rich markup."""

from __future__ import annotations

from typing import Any


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _stat(s: Any) -> str:
    if s.mean is None:
        return "-"
    if s.ci_low is None:
        return f"{s.mean:.3f}"
    return f"{s.mean:.3f} ±{(s.ci_high - s.ci_low) / 2:.3f}"


def _interval(s: Any, digits: int = 3) -> str:
    if s is None or s.mean is None:
        return "-"
    if s.ci_low is None:
        return f"{s.mean:.{digits}f} ({s.note or 'no interval'})"
    return f"{s.mean:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def verdict_text(name: str, v: Any) -> str:
    """One line: the label, E with its interval, ε, the MDE and the seeds that would reach ε."""
    if v.effect is None:
        effect = "E = -"
    elif v.ci_low is None:
        effect = f"E = {v.effect:+.4f} (no interval: {v.seeds} seed{'s' if v.seeds != 1 else ''}, needs 3)"
    else:
        effect = f"E = {v.effect:+.4f} [{v.ci_low:+.4f}, {v.ci_high:+.4f}]"
    mde = "-" if v.mde is None else f"{v.mde:.4f}"
    need = ("" if v.seeds_needed is None
            else f"; {_n(v.seeds_needed, 'seed')} × {_n(v.replicates, 'replicate')} bring it to ε")
    line = (f"verdict {name}: {v.label.upper()} — {effect}, ε = {v.epsilon:g}, MDE = {mde} "
            f"({_n(v.seeds, 'seed')} × {_n(v.replicates, 'replicate')}{need})")
    if (v.label == "inconclusive" and v.ci_low is not None and v.mde is not None and v.mde <= v.epsilon
            and "expanded" in v.method):
        # the MDE is the large-sample 2.8 SE; the rule's interval is wider with few seeds (docs/metrics.md)
        from harness.measure.intervals import expansion_factor

        line += (f"; the MDE is the large-sample 2.8 SE, and at {_n(v.seeds, 'seed')} the rule's interval is "
                 f"{expansion_factor(v.seeds):.2f}× the plain bootstrap's: more seeds narrow it")
    return line


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def verdict_lines(results: Any) -> list[str]:
    """The verdict lines of a results file (SPEC §5b), pooled first; one line saying why when there is none."""
    block = getattr(results, "verdict", None)
    if block is None:
        if not results.spec.get("loop", {}).get("control", False):
            return ["verdict: none — the run has no control arm (loop.control = false), so the effect of the "
                    "synthetic data cannot be separated from retraining noise"]
        return ["verdict: none yet — no generation t >= 1 has finished"]
    lines = []
    if block.pooled is not None:
        lines.append(verdict_text("(pooled)", block.pooled))
    lines += [verdict_text(m, v) for m, v in block.per_classifier.items()]
    lines += undertrained_controls(results)
    gens = block.generations
    lines.append(f"  effect E = mean over t = {gens[0]}..{gens[-1]} of Δ_t(B), B = {block.measure}, treated minus "
                 f"control twin ({block.control_budget} budget); rule: {block.rule}")
    return lines


#: A control twin whose mean accuracy falls this far below generation 0's is reported as under-trained.
UNDERTRAINED_GAP = 0.1


def undertrained_controls(results: Any) -> list[str]:
    """A warning line per classifier whose control twins are much less accurate than its generation-0 models.

    Under the ``steps`` budget a twin trains for the steps its treated twin took to its best epoch; where the
    synthetic data makes that epoch come early (a collapsing loop), the twin is barely trained and the paired
    effect compares against a broken baseline (docs/metrics.md)."""
    lines = []
    if not results.generations:
        return lines
    for name, gen0 in results.generations[0].classifiers.items():
        base = gen0.mean.acc.mean
        worst = None
        for g in results.generations[1:]:
            record = g.classifiers.get(name)
            acc = record.control_mean.acc.mean if record is not None and record.control_mean is not None else None
            if base is not None and acc is not None and acc < base - UNDERTRAINED_GAP and (
                    worst is None or acc < worst[1]):
                worst = (g.generation, acc)
        if worst is not None:
            budget = results.spec.get("loop", {}).get("control_budget", "steps")
            lines.append(f"  warning: {name}'s control twins reach accuracy {worst[1]:.3f} at t = {worst[0]} against "
                         f"{base:.3f} at generation 0: under-trained ({budget} budget), so its verdict compares "
                         "against a weak baseline; see loop.control_budget = recipe")
    return lines


def print_summary(results: Any, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    gens = results.generations
    table = Table(title=escape(f"{results.run_id} ({results.status}, last generation {results.last_generation})"))
    table.add_column("gen", justify="right")
    names = list(results.spec["classifiers"])
    names = [c["name"] for c in names]
    for m in names:
        table.add_column(f"{escape(m)}\nacc", justify="right")
        table.add_column("meo", justify="right")
        table.add_column("worst", justify="right")
    table.add_column("q", justify="right")
    table.add_column("u", justify="right")
    table.add_column("fid", justify="right")
    for g in gens:
        row = [str(g.generation)]
        for m in names:
            agg = g.classifiers[m].mean
            row += [_stat(agg.acc), _stat(agg.meo), _stat(agg.worst_k[0]) if agg.worst_k else "-"]
        gm = g.generator.mean if g.generator else None
        row += [_stat(gm.q) if gm else "", _stat(gm.u) if gm else "", _stat(gm.fid) if gm else ""]
        table.add_row(*row)
    console.print(table)
    for line in verdict_lines(results):
        console.print(line, markup=False, highlight=False)
    amp = results.amplification
    if amp is None:
        return
    line = ", ".join(f"{m}: A_bar = {_interval(a.A_bar_interval) if a.A_bar_interval else _fmt(a.A_bar)}"
                     for m, a in amp.per_classifier.items())
    console.print(f"bias B_t = {amp.measure}; {line} (beside the verdict, not part of it)", markup=False,
                  highlight=False)
    fit = amp.fit
    if fit.status == "identified":
        console.print(f"fit: a = {_fmt(fit.a.estimate)}, b = {_fmt(fit.b.estimate)}, R² = {_fmt(fit.r2)} "
                      f"({fit.n_points} points)", markup=False, highlight=False)
    else:
        console.print(f"fit: {fit.message}", markup=False, highlight=False)
