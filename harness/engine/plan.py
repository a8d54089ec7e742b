"""The plan of a run: its work units and their dependencies (SPEC §2). Pure: no torch, no files read.

One seed's chain, generation by generation::

    gen 0:   classifier[0, M]  for every classifier M      trained on D_0 = D_real
    gen t:   generator[t]      a NEW generator trained on D_{t-1}
             sample[t]         C_t: S images, labels in proportion to D_real's classes
             filter[t]         F_t: the top `keep` fraction of C_t per class (scores from the filter plugin)
             mix[t]            D_t = D_real ∪ round(mix_ratio·|D_real|) images drawn from the queue of F's
             classifier[t, M]  new classifiers trained on D_t, evaluated on the real test set (+ variants)
             evaluate[t]       generator metrics of C_t: q_t, u_t, class balance, FID/KID
    oracle (once per run)      trained on D_real, fixed: gives q_t and (where needed) u_t

A unit's identity (its key) fixes its directory in the run directory and the seed of every RNG it uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.specs import RunSpec

STAGES = ("oracle", "generator", "sample", "filter", "mix", "classifier", "evaluate")
RESULT = "result.json"


@dataclass(frozen=True)
class Unit:
    """One work unit. Picklable: an executor may ship it to another process or machine."""

    stage: str
    generation: int
    seed: int | None  # None: run-level (the oracle)
    name: str | None = None  # the classifier, for stage "classifier"
    deps: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        if self.seed is None:
            return self.stage
        tail = f"/{self.name}" if self.name else ""
        return f"seed-{self.seed}/gen-{self.generation:03d}/{self.stage}{tail}"

    def directory(self, run_dir: Path) -> Path:
        return run_dir / self.key.replace(":", "_")

    def is_done(self, run_dir: Path) -> bool:
        return (self.directory(run_dir) / RESULT).exists()

    @property
    def unit_seed(self) -> int:
        text = f"{self.seed}/{self.stage}/{self.generation}/{self.name or ''}"
        return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def unit(stage: str, seed: int | None, t: int, name: str | None = None, deps: Iterable[Unit] = ()) -> Unit:
    return Unit(stage, t, seed, name, tuple(d.key for d in deps))


def plan(spec: RunSpec) -> list[Unit]:
    """Every unit of the run, in an order that respects dependencies (seed by seed, generation by generation)."""
    oracle = unit("oracle", None, 0)
    units = [oracle]
    for s in spec.seeds:
        prev_classifiers = [unit("classifier", s, 0, m) for m in spec.classifier_names]
        units += prev_classifiers
        prev_mix: Unit | None = None
        filters: list[Unit] = []
        for t in range(1, spec.loop.generations + 1):
            gen = unit("generator", s, t, deps=[prev_mix] if prev_mix else [])
            sample = unit("sample", s, t, deps=[gen])
            filt = unit("filter", s, t, deps=[sample, *prev_classifiers])
            filters.append(filt)
            mix = unit("mix", s, t, deps=filters)
            classifiers = [unit("classifier", s, t, m, deps=[mix]) for m in spec.classifier_names]
            evaluate = unit("evaluate", s, t, deps=[sample, filt, oracle])
            units += [gen, sample, filt, mix, *classifiers, evaluate]
            prev_classifiers, prev_mix = classifiers, mix
    return units


def generation_blocks(units: Sequence[Unit]) -> dict[tuple[int, int], list[Unit]]:
    """Units grouped by (seed, generation); run-level units are left out."""
    blocks: dict[tuple[int, int], list[Unit]] = {}
    for u in units:
        if u.seed is not None:
            blocks.setdefault((u.seed, u.generation), []).append(u)
    return blocks


def queue_generations(spec: RunSpec, t: int) -> list[int]:
    """The generations whose filtered sets are in the queue at generation t (SPEC §2 regimes)."""
    if spec.loop.regime == "replace":
        return [t]
    if spec.loop.regime == "accumulate":
        return list(range(1, t + 1))
    return list(range(max(1, t - spec.loop.queue_capacity + 1), t + 1))
