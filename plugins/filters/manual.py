"""``manual``: the paper's human study (Zhang et al., App. C) — a person keeps or rejects each candidate.

The first time generation ``t`` of seed ``s`` reaches its filter, there are no decisions yet. The filter writes,
into the review directory ``RUN_DIR/review/seed-s/gen-TTT/``:

- ``sheet-class-CC-NAME[-pK].png`` — a contact sheet per class (``per_sheet`` candidates per page), every image
  enlarged to ``tile`` px with its candidate **id** printed under it, in id order;
- ``candidates.csv`` — ``id,class,class_name,decision``, one row per candidate, ``decision`` blank;

- ``review.json`` — which review it is: ``{"filter": "manual", "seed": s, "generation": t, "candidates": n}``
  (what ``bench review`` reads; it never parses the folder's path);

and stops the run with :class:`~harness.errors.ReviewPending` (exit code 3). A person then decides, in one of
three ways:

- writes ``reject`` in the ``decision`` column of ``candidates.csv`` for each rejected candidate (blank = keep;
  a file with *no* decision filled in counts as not reviewed yet — to keep everything use ``--accept-all``);
- or runs ``bench review RUN_DIR --reject ID…`` / ``--accept-all`` / ``--from-csv FILE``;
- or writes ``decisions.csv`` (below) directly.

Running the same ``bench run`` command again resumes the run: the filter reads the decisions, scores kept
candidates 1 and rejected 0, and keeps **exactly** the accepted ones (``keep`` is ignored; a class may lose all
its candidates).

**The decisions file** is ``decisions.csv`` in the review directory, UTF-8 CSV with a header::

    id,decision
    0,keep
    1,reject

``id`` is the candidate's index in the generation's sample set (``sample/samples.safetensors``, 0-based, as on
the contact sheets); ``decision`` is ``keep`` or ``reject`` (case-insensitive; blank = keep). Ids not listed are
kept; an unknown id, a repeated id or another decision is an error that names the file and line. Other columns
are ignored. ``bench review`` always writes every id; an edited ``candidates.csv`` is copied into
``decisions.csv`` when the run resumes, so ``decisions.csv`` is the record of the review.

``bench review`` is this plugin's command: the filter package adds it to ``bench`` through the
``register_commands`` hook. This module imports no torch at its top, so ``bench review`` stays light.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import Field

from harness.engine.rundir import read_json, write_bytes, write_json
from harness.errors import ConfigError, ReviewPending, RunDirError
from harness.interfaces import Filter, FilterContext, Options

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from harness.imageset import ImageSet

DECISIONS = "decisions.csv"
CANDIDATES = "candidates.csv"
REVIEW = "review.json"
KEEP, REJECT = "keep", "reject"


class ManualOptions(Options):
    """:ivar tile: the side, in px, of each image on a contact sheet (images are enlarged without smoothing).
    :ivar columns: images per row of a contact sheet.
    :ivar per_sheet: images per contact-sheet page; a class with more candidates gets several pages.
    """

    tile: int = Field(default=64, ge=8, le=1024)
    columns: int = Field(default=10, ge=1, le=100)
    per_sheet: int = Field(default=100, ge=1, le=10000)


# --------------------------------------------------------------------------------------------------- CSV files


def _rows(path: Path) -> Iterable[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a CSV file with a header; keys lower-cased and stripped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read review file {path}: {exc.strerror or exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [(f or "").strip().lower() for f in (reader.fieldnames or [])]
    if "id" not in fields or "decision" not in fields:
        raise ConfigError(f"{path} must be a CSV with a header naming the columns id and decision")
    for row in reader:
        clean = {(k or "").strip().lower(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
        if not any(clean.values()):
            continue  # blank line
        yield reader.line_num, clean


def read_decisions(path: Path, num_candidates: int, *, labels: Sequence[int] | None = None) -> dict[int, str]:
    """``{id: "keep" | "reject"}`` for every id in ``[0, num_candidates)`` (unlisted or blank ids: keep).

    :param labels: when given, a ``class`` column (if present) must match them (catches a sheet of another
        generation).
    :raises ConfigError: naming the file and line of a bad row.
    """
    out: dict[int, str] = {}
    for line, row in _rows(path):
        raw = row.get("id", "")
        try:
            i = int(raw)
        except ValueError:
            raise ConfigError(f"{path}, line {line}: id {raw!r} is not an integer") from None
        if not 0 <= i < num_candidates:
            raise ConfigError(f"{path}, line {line}: id {i} is not a candidate (ids run 0 to {num_candidates - 1})")
        if i in out:
            raise ConfigError(f"{path}, line {line}: id {i} appears twice")
        decision = row.get("decision", "").lower() or KEEP
        if decision not in (KEEP, REJECT):
            raise ConfigError(f"{path}, line {line}: decision {row['decision']!r} must be keep, reject or blank")
        if labels is not None and row.get("class", "") != "":
            if row["class"] != str(labels[i]):
                raise ConfigError(
                    f"{path}, line {line}: candidate {i} is of class {labels[i]}, not {row['class']}; "
                    f"is this file from another generation?"
                )
        out[i] = decision
    return {i: out.get(i, KEEP) for i in range(num_candidates)}


def has_marks(path: Path) -> bool:
    """Whether a ``candidates.csv`` has at least one decision filled in (i.e. a person has reviewed it)."""
    return any(row.get("decision", "") for _, row in _rows(path))


def write_decisions(path: Path, decisions: Mapping[int, str]) -> None:
    """Write ``decisions.csv`` atomically: ``id,decision`` for every id, in id order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "decision"])
    for i in sorted(decisions):
        w.writerow([i, decisions[i]])
    write_bytes(path, buf.getvalue().encode("utf-8"))


def read_candidates(path: Path) -> list[tuple[int, int, str]]:
    """``(id, class, class_name)`` rows of a ``candidates.csv``, in file order."""
    out = []
    for line, row in _rows(path):
        try:
            out.append((int(row["id"]), int(row.get("class", "-1") or -1), row.get("class_name", "")))
        except ValueError:
            raise ConfigError(f"{path}, line {line}: id and class must be integers") from None
    return out


def write_candidates(path: Path, labels: Sequence[int], class_names: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "class", "class_name", "decision"])
    for i, y in enumerate(labels):
        w.writerow([i, y, class_names[y] if 0 <= y < len(class_names) else "", ""])
    write_bytes(path, buf.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------------------------------- sheets


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "class"


def contact_sheets(
    images: Any, labels: Sequence[int], class_names: Sequence[str], out_dir: Path, *, tile: int = 64,
    columns: int = 10, per_sheet: int = 100,
) -> list[Path]:
    """One PNG grid per class (and page), candidate ids printed under their images; returns the paths.

    :param images: uint8 ``N×C×H×W`` (torch tensor or numpy array), ``C`` 1 or 3.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    arr = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"contact sheets need uint8 N×C×H×W with C 1 or 3, got shape {arr.shape}")
    font = ImageFont.load_default()
    label_h, header_h, pad = 14, 18, 4
    cell_w, cell_h = tile + pad, tile + label_h + pad
    labels = [int(y) for y in labels]
    paths: list[Path] = []
    for c in sorted(set(labels)):
        ids = [i for i, y in enumerate(labels) if y == c]
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        pages = [ids[k:k + per_sheet] for k in range(0, len(ids), per_sheet)]
        for p, page in enumerate(pages):
            cols = min(columns, len(page))
            rows = (len(page) + cols - 1) // cols
            sheet = Image.new("RGB", (max(cols * cell_w + pad, 200), header_h + rows * cell_h + pad), "white")
            draw = ImageDraw.Draw(sheet)
            title = f"class {c}: {name} - ids {page[0]}..{page[-1]}"
            title += f" (page {p + 1}/{len(pages)})" if len(pages) > 1 else ""
            draw.text((pad, 3), title, fill="black", font=font)
            for k, i in enumerate(page):
                img = arr[i].transpose(1, 2, 0)
                pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).convert("RGB")
                pil = pil.resize((tile, tile), Image.Resampling.NEAREST)
                x, y = pad + (k % cols) * cell_w, header_h + (k // cols) * cell_h
                sheet.paste(pil, (x, y))
                draw.text((x, y + tile + 1), str(i), fill="black", font=font)
            suffix = f"-p{p + 1}" if len(pages) > 1 else ""
            path = out_dir / f"sheet-class-{c:02d}-{_slug(name)}{suffix}.png"
            buf = io.BytesIO()
            sheet.save(buf, format="PNG")
            write_bytes(path, buf.getvalue())
            paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------- the filter


class ManualFilter(Filter):
    """A person keeps or rejects every candidate, from contact sheets; the run waits (exit 3) until they have."""

    Options = ManualOptions
    options: ManualOptions

    def decisions(self, candidates: ImageSet, context: FilterContext) -> dict[int, str] | None:
        """The decisions for these candidates, or None when nobody has reviewed them yet."""
        d = Path(context.review_dir)
        n = len(candidates)
        labels = candidates.labels.tolist()
        if (d / DECISIONS).exists():
            return read_decisions(d / DECISIONS, n, labels=labels)
        if (d / CANDIDATES).exists() and has_marks(d / CANDIDATES):
            decisions = read_decisions(d / CANDIDATES, n, labels=labels)
            write_decisions(d / DECISIONS, decisions)
            return decisions
        return None

    def score(self, candidates: ImageSet, context: FilterContext) -> torch.Tensor:
        import torch

        decisions = self.decisions(candidates, context)
        if decisions is not None:
            return torch.tensor([1.0 if decisions[i] == KEEP else 0.0 for i in range(len(candidates))])
        d = Path(context.review_dir)
        d.mkdir(parents=True, exist_ok=True)
        o = self.options
        contact_sheets(candidates.images, candidates.labels.tolist(), context.class_names, d, tile=o.tile,
                       columns=o.columns, per_sheet=o.per_sheet)
        write_candidates(d / CANDIDATES, candidates.labels.tolist(), context.class_names)
        write_json(d / REVIEW, {"filter": "manual", "seed": context.seed, "generation": context.generation,
                                "candidates": len(candidates)})
        of_seed = f" of seed {context.seed}" if context.seed is not None else ""
        run_dir = context.run_dir if context.run_dir is not None else "RUN_DIR"
        raise ReviewPending(
            f"generation {context.generation}{of_seed} waits for review: mark rejects in {d / CANDIDATES} "
            f"(or run `bench review {run_dir}`), then run the same command again"
        )

    def select(self, scores: torch.Tensor, labels: torch.Tensor, keep: float) -> torch.Tensor:
        return scores > 0.5


# --------------------------------------------------------------------------------------------------- bench review


@dataclass(frozen=True)
class Review:
    """One review the filter asked for, as its ``review.json`` describes it."""

    seed: int | None
    generation: int
    directory: Path

    @property
    def candidates(self) -> Path:
        return self.directory / CANDIDATES

    @property
    def decisions(self) -> Path:
        return self.directory / DECISIONS

    @property
    def pending(self) -> bool:
        return not self.decisions.exists()

    @property
    def sheets(self) -> list[Path]:
        return sorted(self.directory.glob("sheet-*.png"))

    def label(self) -> str:
        return f"seed {self.seed} generation {self.generation}" if self.seed is not None else f"generation {self.generation}"


def read_review(path: Path) -> Review:
    """The review described by a ``review.json`` the filter wrote.

    :raises RunDirError: the file is damaged.
    """
    try:
        info = read_json(path)
        seed, generation = info["seed"], info["generation"]
        if info.get("filter") != "manual" or not isinstance(generation, int) or not isinstance(seed, (int, type(None))):
            raise ValueError("not a manual review")
    except (OSError, ValueError, KeyError, TypeError):
        raise RunDirError(f"{path} is damaged; delete its folder and run the same bench run command again") from None
    return Review(seed, generation, path.parent)


def find_reviews(run_dir: Path) -> list[Review]:
    """Every review of a run (pending or decided), by seed and generation."""
    reviews = [read_review(p) for p in Path(run_dir).rglob(REVIEW) if p.is_file()]
    return sorted(reviews, key=lambda r: (r.seed if r.seed is not None else -1, r.generation))


def parse_ids(values: list[str]) -> list[int]:
    """``["3", "5,7", "9 11"]`` → ``[3, 5, 7, 9, 11]``."""
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


def add_review_command(app: typer.Typer) -> None:
    """Add ``bench review`` to the ``bench`` application (called by the filter package's ``register_commands``)."""
    app.command("review")(review)
