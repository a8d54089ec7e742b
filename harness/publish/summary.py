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
    amp = results.amplification
    if amp is None:
        return
    line = ", ".join(f"{m}: A_bar = {_fmt(a.A_bar)}" for m, a in amp.per_classifier.items())
    console.print(f"bias B_t = {amp.measure}; {line}", markup=False, highlight=False)
    fit = amp.fit
    if fit.status == "ok":
        console.print(f"fit: a = {_fmt(fit.a.estimate)}, b = {_fmt(fit.b.estimate)}, R² = {_fmt(fit.r2)} "
                      f"({fit.n_points} points)", markup=False, highlight=False)
    else:
        console.print(f"fit: {fit.message}", markup=False, highlight=False)
