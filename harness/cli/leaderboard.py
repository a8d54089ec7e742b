"""``bench leaderboard validate|submit|show|compare|render``: the leaderboard of results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from harness.cli import app, fail, user_errors

leaderboard_app = typer.Typer(help="Validate, submit, rank, compare and render leaderboard entries.",
                              no_args_is_help=True)
app.add_typer(leaderboard_app, name="leaderboard")

ENTRIES = Path("leaderboard") / "entries"
DIR_OPTION = typer.Option(
    None, "--dir", help="The leaderboard's entries directory [$BENCH_LEADERBOARD, else leaderboard/entries in this "
    "directory or the nearest parent that has one, else in the bench checkout that runs].",
)


def entries_dir(directory: Path | None) -> Path:
    """``--dir``, else ``$BENCH_LEADERBOARD``, else the first ``leaderboard/entries`` found from the working
    directory upwards, else the one in the source checkout bench runs from; ``./leaderboard/entries`` if none
    exists (``submit`` creates it)."""
    import os

    if directory is not None:
        return directory
    if os.environ.get("BENCH_LEADERBOARD"):
        return Path(os.environ["BENCH_LEADERBOARD"])
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / ENTRIES).is_dir():
            return folder / ENTRIES if folder != here else ENTRIES
    checkout = Path(__file__).resolve().parents[2] / ENTRIES
    return checkout if checkout.is_dir() else ENTRIES


def _out_console() -> Any:
    """The command's own output (stdout): wide enough for the tables when piped."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    return console


def _err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


# --------------------------------------------------------------------------------------------------- validate


@leaderboard_app.command("validate")
@user_errors
def validate(files: list[Path] = typer.Argument(..., help="Results files to check.")) -> None:
    """Check results files against the schema (model, committed JSON Schema, consistency).

    One line per valid file on stdout; every problem, naming the file and the field, on stderr; exit 2 if any
    file is invalid.
    """
    from rich.markup import escape

    from harness.errors import BenchError
    from harness.publish.leaderboard import check_file

    err = _err_console()
    failed = 0
    schema_note = False
    for path in files:
        try:
            checked = check_file(path)
        except BenchError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            failed += 1
            continue
        schema_note |= not checked.schema_checked
        if checked.entry is None:
            failed += 1
            for problem in checked.problems[:20]:
                err.print(f"[bold red]error:[/] {escape(str(path))}: {escape(problem)}")
            if len(checked.problems) > 20:
                err.print(f"[bold red]error:[/] {escape(str(path))}: … {len(checked.problems) - 20} more problems")
            continue
        r = checked.entry.results
        migrated = f", migrated from schema_version {checked.entry.source_version}" if checked.entry.migrated else ""
        typer.echo(f"{path}: ok ({r.run_id}, schema_version {r.schema_version}, {r.status}{migrated})")
    if schema_note:
        err.print("[yellow]note:[/] the jsonschema package is not installed; checked with the pydantic model only")
    if failed:
        raise typer.Exit(2)


# --------------------------------------------------------------------------------------------------- submit


@leaderboard_app.command("submit")
@user_errors
def submit(
    file: Path = typer.Argument(..., help="A results file (RUN_DIR/results.json)."),
    directory: Path | None = DIR_OPTION,
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Accept a run that stopped early."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an entry with the same run_id."),
) -> None:
    """Validate a results file and store it as DIR/<run_id>.json (the stored path on stdout)."""
    from harness.publish.leaderboard import submit as submit_entry

    entry, target = submit_entry(file, entries_dir(directory), allow_partial=allow_partial, replace=replace)
    if entry.migrated:
        _err_console().print(f"migrated from schema_version {entry.source_version} to "
                             f"{entry.results.schema_version}", markup=False)
    typer.echo(str(target))


# --------------------------------------------------------------------------------------------------- show


@leaderboard_app.command("show")
@user_errors
def show(
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Only entries on this dataset."),
    sort: str = typer.Option("A_bar", "--sort", "-s",
                             help="A_bar | acc | meo | di | md | worst | dp | eodds | q | u | fid | kid."),
    reverse: bool = typer.Option(False, "--reverse", help="Worst first."),
    directory: Path | None = DIR_OPTION,
    output: str = typer.Option("table", "--format", "-F",
                               help="table (the last generation) | csv | json (every generation, in track and rank "
                               "order)."),
    as_json: bool = typer.Option(False, "--json", help="Machine output: the ranked rows (last generation) as JSON."),
) -> None:
    """Rank the entries within tracks: one row per (entry, classifier), best first by the chosen column.

    A track holds the entries that `bench leaderboard compare` calls a fair comparison of one another (same
    dataset and options, generations, budget, filter, recipe, seeds count and harness); ranks are only given
    within a track. Ranks use the last generation's seed means; A_bar is the geometric mean of the classifier's
    A_t (lower = less bias amplification). Missing values rank last. With --format csv or json, one row per
    (entry, classifier, generation) with that generation's seed means and bias B_t, in track and rank order.
    """
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from harness.publish.leaderboard import COLUMNS, load_entries, ranked_tracks

    if output not in SHOW_FORMATS:
        raise fail(f"unknown --format {output!r}; choose from: {', '.join(SHOW_FORMATS)}")
    directory = entries_dir(directory)
    entries = load_entries(directory)
    if dataset is not None:
        entries = [e for e in entries if e.results.dataset.name == dataset]
    tracks = ranked_tracks(entries, sort, reverse=reverse)
    rows = [r for _, track_rows in tracks for r in track_rows]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if output != "table":
        _print_generations(generation_rows(rows, entries), output)
        return
    if not rows:
        raise fail(f"no entries in {directory}" + (f" on dataset {dataset!r}" if dataset else ""))
    sort = {k.lower(): k for k in COLUMNS}[sort.lower()]
    metrics = ["acc", "meo", "di", "md", "worst", "q", "u", "fid", "A_bar"]
    direction = "lower" if COLUMNS[sort][1] == "lower" else "higher"
    if reverse:
        direction = "higher" if direction == "lower" else "lower"
    out = _out_console()
    out.print(escape(f"leaderboard ({directory}): {len(tracks)} track(s), each ranked by {sort}, {direction} first; "
                     "entries in different tracks are not compared"), highlight=False)
    for track, track_rows in tracks:
        table = Table(title=Text(f"track {track.number}: {track.summary()}"), title_justify="left",
                      caption="last generation, mean over seeds; A_bar: geometric mean of A_t (>1: bias amplified)")
        for col in ("#", "run", "generator", "classifier", "gen"):
            table.add_column(col, justify="right" if col in ("#", "gen") else "left")
        for m in metrics:
            table.add_column(m, justify="right", style="bold" if m == sort else None,
                             header_style="bold reverse" if m == sort else None)
        table.add_column("verdict")
        table.add_column("status")
        for r in track_rows:  # every string of an entry is Text: entries come from strangers, never read as markup
            verdict = r["verdict"]
            table.add_row(
                "—" if r["rank"] is None else str(r["rank"]),
                *(Text(str(r[k])) for k in ("run_id", "generator", "classifier")),
                f"{r['generation']}/{r['generations']}",
                *(_fmt(r[m], 1 if m == "fid" else 3) for m in metrics),
                Text("—" if verdict is None else str(verdict["label"])),
                Text(str(r["status"]), style=None if r["status"] == "complete" else "yellow"),
            )
        out.print(table)


SHOW_FORMATS = ("table", "csv", "json")
GENERATION_METRICS = ("acc", "meo", "di", "md", "worst", "dp", "eodds", "B", "q", "u", "fid", "kid")


def generation_rows(ranked: list[dict[str, Any]], entries: list[Any]) -> list[dict[str, Any]]:
    """Every generation of every ranked (entry, classifier) row, in rank order: the row's identity, track and
    rank, then that generation's seed means (``B``: the bias B_t under the run's measure; ``q``… from ``t = 1``)."""
    by_file = {e.path.name: e.results for e in entries}
    out = []
    for row in ranked:
        r = by_file[row["file"]]
        name = row["classifier"]
        amp = r.amplification.per_classifier.get(name) if r.amplification else None
        for g in r.generations:
            agg = g.classifiers[name].mean
            gen = g.generator.mean if g.generator is not None else None
            values = {
                "acc": agg.acc.mean, "meo": agg.meo.mean, "di": agg.di.mean, "md": agg.md.mean,
                "worst": agg.worst_k[0].mean if agg.worst_k else None, "dp": agg.dp.mean, "eodds": agg.eodds.mean,
                "B": amp.bias[g.generation] if amp is not None and g.generation < len(amp.bias) else None,
                **{k: None if gen is None else getattr(gen, k).mean for k in ("q", "u", "fid", "kid")},
            }
            out.append({
                "track": row.get("track"), "rank": row["rank"], "run_id": row["run_id"], "file": row["file"],
                "dataset": row["dataset"],
                "generator": row["generator"], "classifier": name, "filter": row["filter"],
                "seeds": row["seeds"], "status": row["status"], "generation": g.generation,
                "generations": row["generations"], **values, "A_bar": row["A_bar"],
            })
    return out


def _print_generations(rows: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    import csv
    import sys

    columns = list(rows[0]) if rows else ["rank", "run_id", "classifier", "generation", *GENERATION_METRICS]
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


# --------------------------------------------------------------------------------------------------- compare


def _cells(pair: tuple[Any, Any], better: str, digits: int = 3) -> list[str]:
    """``a``, ``b`` and ``Δ = b − a``; green when b is better, red when worse, ``*`` when the intervals part."""
    sa, sb = pair
    ma = sa.mean if sa is not None and hasattr(sa, "mean") else sa
    mb = sb.mean if sb is not None and hasattr(sb, "mean") else sb
    if ma is None or mb is None:
        return [_fmt(ma, digits), _fmt(mb, digits), ""]
    delta = mb - ma
    if abs(delta) < 0.5 * 10 ** -digits:
        return [_fmt(ma, digits), _fmt(mb, digits), f"[dim]{0.0:.{digits}f}[/]"]
    text = f"{delta:+.{digits}f}"
    good = (delta > 0) == (better == "higher")
    apart = (hasattr(sa, "ci_low") and hasattr(sb, "ci_low") and None not in (sa.ci_low, sa.ci_high, sb.ci_low,
                                                                            sb.ci_high)
             and (sb.ci_low > sa.ci_high or sa.ci_low > sb.ci_high))
    style = ("bold " if apart else "") + ("green" if good else "red")
    return [_fmt(ma, digits), _fmt(mb, digits), f"[{style}]{text}{'*' if apart else ''}[/]"]


@leaderboard_app.command("compare")
@user_errors
def compare(
    a: str = typer.Argument(..., help="Entry A: a results file, a run directory or a run_id in --dir."),
    b: str = typer.Argument(..., help="Entry B, compared with A (Δ = B − A)."),
    directory: Path | None = DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine output: the differences as JSON."),
) -> None:
    """Compare two entries per generation and per classifier, and warn when the comparison is unfair."""
    from rich.markup import escape
    from rich.table import Table

    from harness.publish.leaderboard import (
        COLUMNS,
        amplification_table,
        classifier_names,
        differences,
        generation_table,
        generator_table,
        resolve_entry,
        unfair,
    )

    directory = entries_dir(directory)
    ea, eb = resolve_entry(a, directory), resolve_entry(b, directory)
    ra, rb = ea.results, eb.results
    diffs = differences(ra, rb)
    bad = unfair(diffs)
    if as_json:
        typer.echo(json.dumps({
            "a": ra.run_id, "b": rb.run_id, "fair": not bad,
            "differences": [{"category": d.category, "path": d.path, "a": d.a, "b": d.b, "fair": d.fair}
                            for d in diffs],
        }, indent=2))
        return
    out = _out_console()
    out.print(f"[bold]A[/] {escape(f'{ra.run_id} ({ra.status}, {ea.path})')}")
    out.print(f"[bold]B[/] {escape(f'{rb.run_id} ({rb.status}, {eb.path})')}")
    if bad:
        out.print(f"[bold yellow]WARNING:[/] not a fair comparison — {len(bad)} difference(s) beyond the "
                  "generator and classifiers:")
        for d in bad:
            out.print(f"  - {escape(f'[{d.category}]')} {escape(d.path)}: {escape(repr(d.a))} ≠ {escape(repr(d.b))}")
        categories = ", ".join(sorted({d.category for d in bad}))
        differ = f"{ra.run_id} and {rb.run_id} differ in {categories}"
        _err_console().print(f"[bold yellow]WARNING:[/] {escape(differ)}; the comparison is not fair")
    for d in (d for d in diffs if d.fair):
        out.print(f"  [dim]{escape(d.category)}: {escape(d.path)}: {escape(repr(d.a))} → {escape(repr(d.b))}[/]")

    names_a, names_b = classifier_names(ra), classifier_names(rb)
    shared = [m for m in names_a if m in names_b]
    for m in [m for m in names_a if m not in names_b] + [m for m in names_b if m not in names_a]:
        out.print(f"classifier {escape(m)} is only in {'A' if m in names_a else 'B'}")
    metrics = ("acc", "meo", "di", "md", "worst")
    for m in shared:
        table = Table(title=f"{escape(m)}: per generation (Δ = B − A; green: B better, red: B worse; "
                            "*: 95% intervals do not overlap)")
        table.add_column("gen", justify="right")
        for k in metrics:
            table.add_column(f"{k} A", justify="right")
            table.add_column(f"{k} B", justify="right")
            table.add_column("Δ", justify="right")
        for row in generation_table(ra, rb, m, metrics):
            cells = [str(row["generation"])]
            for k in metrics:
                cells += _cells(row[k], COLUMNS[k][1])
            table.add_row(*cells)
        out.print(table)
    if shared:
        table = Table(title="amplification A_t = B_{t+1} / B_t (lower: less amplification)")
        table.add_column("t", justify="right")
        amp = {m: amplification_table(ra, rb, m) for m in shared}
        for m in shared:
            table.add_column(f"{escape(m)} A", justify="right")
            table.add_column(f"{escape(m)} B", justify="right")
            table.add_column("Δ", justify="right")
        n = max(len(rows) for rows, _ in amp.values())
        for t in range(n):
            cells = [str(t)]
            for m in shared:
                rows = amp[m][0]
                cells += _cells(rows[t]["A"] if t < len(rows) else (None, None), "lower")
            table.add_row(*cells)
        cells = ["A_bar"]
        for m in shared:
            cells += _cells(amp[m][1], "lower")
        table.add_row(*cells, style="bold")
        out.print(table)
    gen_rows = generator_table(ra, rb)
    if gen_rows:
        table = Table(title="generator per generation (q: label fidelity, u: unbalanced generation)")
        table.add_column("gen", justify="right")
        for k in ("q", "u", "fid"):
            table.add_column(f"{k} A", justify="right")
            table.add_column(f"{k} B", justify="right")
            table.add_column("Δ", justify="right")
        for row in gen_rows:
            cells = [str(row["generation"])]
            for k in ("q", "u", "fid"):
                cells += _cells(row[k], COLUMNS[k][1], 1 if k == "fid" else 3)
            table.add_row(*cells)
        out.print(table)


# --------------------------------------------------------------------------------------------------- render


@leaderboard_app.command("render")
@user_errors
def render(
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Where to write the site [site beside the entries directory]."),
    directory: Path | None = DIR_OPTION,
    runs: list[Path] = typer.Option([], "--runs",
                                    help="A folder of run directories, for sample grids (repeatable) [runs]."),
) -> None:
    """Write a static site that works offline: index.html (sortable, filterable) and a page per entry."""
    from harness.publish.leaderboard import load_entries
    from harness.publish.site import render_site

    directory = entries_dir(directory)
    entries = load_entries(directory)
    if not runs and Path("runs").is_dir():
        runs = [Path("runs")]
    index = render_site(entries, out if out is not None else directory.parent / "site", runs=runs)
    typer.echo(str(index))
