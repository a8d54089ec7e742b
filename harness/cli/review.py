"""``bench review RUN_DIR``: list the manual reviews a run waits for, and record a person's decisions.

The ``manual`` filter (``plugins/filters/manual.py``) stops a run with exit code 3 and leaves, per review,
contact sheets and a ``candidates.csv`` under ``RUN_DIR/review/seed-S/gen-TTT/``. This command lists them and
writes the review's ``decisions.csv`` (``id,decision`` with ``keep``/``reject``, every id); then the same
``bench run`` command resumes the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import typer

from harness.cli import app, user_errors


@dataclass(frozen=True)
class Review:
    seed: int
    generation: int
    directory: Path

    @property
    def candidates(self) -> Path:
        return self.directory / "candidates.csv"

    @property
    def decisions(self) -> Path:
        return self.directory / "decisions.csv"

    @property
    def pending(self) -> bool:
        return not self.decisions.exists()

    @property
    def sheets(self) -> list[Path]:
        return sorted(self.directory.glob("sheet-*.png"))

    def label(self) -> str:
        return f"seed {self.seed} generation {self.generation}"


def find_reviews(run_dir: Path) -> list[Review]:
    """Every review directory of a run that holds a ``candidates.csv`` or a ``decisions.csv``, in order."""
    out = []
    for d in sorted((run_dir / "review").glob("seed-*/gen-*")):
        s = re.fullmatch(r"seed-(-?\d+)", d.parent.name)
        g = re.fullmatch(r"gen-(\d+)", d.name)
        if s and g and d.is_dir() and ((d / "candidates.csv").exists() or (d / "decisions.csv").exists()):
            out.append(Review(int(s.group(1)), int(g.group(1)), d))
    return sorted(out, key=lambda r: (r.seed, r.generation))


def parse_ids(values: list[str]) -> list[int]:
    """``["3", "5,7", "9 11"]`` → ``[3, 5, 7, 9, 11]``."""
    from harness.errors import ConfigError

    ids: list[int] = []
    for v in values:
        for part in re.split(r"[,\s]+", v.strip()):
            if not part:
                continue
            try:
                ids.append(int(part))
            except ValueError:
                raise ConfigError(f"--reject expects candidate ids (integers), got {part!r}") from None
    return ids


@app.command("review")
@user_errors
def review(
    run_dir: Path = typer.Argument(..., help="The run directory (printed by bench run; under --out)."),
    accept_all: bool = typer.Option(False, "--accept-all", help="Keep every candidate of the pending review(s)."),
    reject: list[str] = typer.Option(
        [], "--reject", help="Candidate ids to reject (repeatable, or comma-separated); the others are kept."
    ),
    from_csv: Path | None = typer.Option(
        None, "--from-csv", help="A CSV with columns id and decision (keep / reject / blank = keep)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Only the review of this seed."),
    generation: int | None = typer.Option(None, "--generation", "-t", help="Only the review of this generation."),
) -> None:
    """List pending manual reviews (contact sheets and CSVs), or record decisions so the run can continue.

    Without an action, prints each pending review's contact sheets and candidates.csv. With --accept-all,
    --reject or --from-csv, writes the review's decisions.csv; run the same `bench run` command again to resume.
    """
    from harness.errors import ConfigError, RunDirError
    from plugins.filters.manual import KEEP, REJECT, read_candidates, read_decisions, write_decisions

    if not (run_dir / "spec.json").is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no spec.json); give the directory bench run printed")
    reviews = [
        r for r in find_reviews(run_dir)
        if (seed is None or r.seed == seed) and (generation is None or r.generation == generation)
    ]
    pending = [r for r in reviews if r.pending]
    acting = accept_all or bool(reject) or from_csv is not None

    if not acting:
        if not pending:
            done = f" ({len(reviews)} already decided)" if reviews else ""
            typer.echo(f"no reviews pending in {run_dir}{done}")
            return
        for r in pending:
            n = len(read_candidates(r.candidates))
            typer.echo(f"{r.label()}: {n} candidates waiting for review")
            for sheet in r.sheets:
                typer.echo(f"  sheet  {sheet}")
            typer.echo(f"  csv    {r.candidates}")
        typer.echo(
            f"mark rejects in the csv, or: bench review {run_dir} --reject ID[,ID...] | --accept-all | "
            f"--from-csv FILE; then run the same bench run command again"
        )
        return

    if accept_all and (reject or from_csv is not None):
        raise ConfigError("--accept-all keeps everything; do not combine it with --reject or --from-csv")
    if not pending:
        what = "matching --seed/--generation " if (seed is not None or generation is not None) else ""
        raise ConfigError(
            f"no {what}review is pending in {run_dir}; to change a decision not yet applied, delete its decisions.csv"
        )
    if not accept_all and len(pending) > 1:
        names = ", ".join(r.label() for r in pending)
        raise ConfigError(f"{len(pending)} reviews are pending ({names}); choose one with --seed and --generation")

    for r in pending:
        rows = read_candidates(r.candidates)
        n = len(rows)
        decisions = {i: KEEP for i in range(n)}
        if from_csv is not None:
            in_order = [i for i, _, _ in rows] == list(range(n))
            decisions = read_decisions(from_csv, n, labels=[c for _, c, _ in rows] if in_order else None)
        for i in parse_ids(reject):
            if not 0 <= i < n:
                raise ConfigError(f"--reject {i}: not a candidate of {r.label()} (ids run 0 to {n - 1})")
            decisions[i] = REJECT
        write_decisions(r.decisions, decisions)
        rejected = sum(1 for v in decisions.values() if v == REJECT)
        typer.echo(f"{r.label()}: wrote {r.decisions} ({n - rejected} kept, {rejected} rejected)")
    typer.echo("run the same bench run command again to continue")
