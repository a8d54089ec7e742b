"""``bench status RUN_DIR``: where a run stands, while it runs or after it stopped."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import typer

from harness.cli import app, user_errors


@app.command("status")
@user_errors
def status(
    run_dir: Path = typer.Argument(..., help="A run directory (bench run prints its results path inside it)."),
    as_json: bool = typer.Option(False, "--json", help="Machine output: the status as JSON."),
) -> None:
    """Show units done of all, the running unit, the time left and the metrics of finished generations.

    Reads only the run directory, so it works on a run in progress (from another shell) or one that stopped.
    The estimate of the time left assumes one unit at a time, each as long as the finished units of its kind.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.engine.plan import plan
    from harness.engine.progress import duration, read_spec, run_status
    from harness.engine.rundir import verify_run

    st = run_status(run_dir)
    # sizes and result.json checksums only (no file is read): `bench run --verify` also checks every sha256
    damaged = verify_run(run_dir, plan(read_spec(run_dir)), contents=False)
    if as_json:
        data = asdict(st)
        data["damaged"] = [{"unit": key, "problem": problem} for key, problem in damaged]
        data["run_dir"] = str(st.run_dir)
        for r in data["running"]:
            r["started_at"] = r["started_at"].isoformat(timespec="seconds")
        data["complete"] = st.complete
        typer.echo(json.dumps(data, indent=2))
        return
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"run {escape(st.run_id)} ({escape(str(st.run_dir))})")
    share = f" ({100 * st.done / st.total:.0f}%)" if st.total else ""
    out.print(f"units: {st.done}/{st.total} done{share}, {duration(st.work_done_s)} of work so far")
    for key, problem in damaged:
        out.print(f"[red]damaged:[/] {escape(key)}: {escape(problem)}; the same bench run command computes it again")
    now = datetime.now(UTC)
    for r in st.running:
        ago = duration((now - r.started_at).total_seconds())
        where = f"pid {r.pid}" + ("" if r.alive is not None else f" on {r.host}")
        if r.alive is False:
            out.print(f"[yellow]stopped:[/] {escape(r.unit)} was running {ago} ago in {where}, which has exited; "
                      "the same bench run command resumes the run")
        else:
            out.print(f"running: {escape(r.unit)} (for {ago}, {escape(where)})")
    if not st.running and not st.complete and st.ready:
        shown = ", ".join(st.ready[:4]) + (f" and {len(st.ready) - 4} more" if len(st.ready) > 4 else "")
        out.print(f"next: {escape(shown)} (no unit is marked as running in this run directory)")
    if st.complete:
        out.print("complete" + (f"; results.json: {st.results_status}" if st.results_status else
                                "; no results.json yet"))
    else:
        out.print(f"time left: about {duration(st.eta_s)}")
    if not st.generations:
        out.print("no generation finished yet")
        return
    names = list(st.generations[0].classifiers)
    measure = st.generations[0].measure
    table = Table(title=f"finished generations (B = {measure})")
    table.add_column("seed", justify="right")
    table.add_column("gen", justify="right")
    for name in names:
        table.add_column(f"{escape(name)} acc", justify="right")
        table.add_column(f"{escape(name)} B", justify="right")
    table.add_column("q", justify="right")
    table.add_column("u", justify="right")

    def num(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    for g in st.generations:
        cells = [str(g.seed), str(g.generation)]
        for name in names:
            c = g.classifiers[name]
            cells += [num(c.acc), num(c.bias)]
        cells += [num(g.q) if g.generation else "", num(g.u) if g.generation else ""]
        table.add_row(*cells)
    out.print(table)
