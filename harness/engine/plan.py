"""The plan of a run: its work units and their dependencies (SPEC §2). Pure: no torch, no files read.

One seed's chain, generation by generation::

    gen 0:   classifier[0, M, r]  for every classifier M and replicate r: trained on D_0 = D_real
    gen t:   generator[t]      a NEW generator trained on D_{t-1}
             sample[t]         C_t: S images, labels in proportion to D_real's classes
             filter[t]         F_t: the top `keep` fraction of C_t per class (scores from the filter plugin)
             evaluate[t]       generator metrics of C_t: q_t, u_t, class balance, FID/KID; C_t's subgroups
             mix[t]            D_t = D_real ∪ round(mix_ratio·|D_real|) images drawn from the queue of F's
                               (the real part drawn anew with loop.synthetic_fraction: reads f_{t-1} with
                               loop.disparity_amplification)
             classifier[t, M, r]  new classifiers trained on D_t, evaluated on the real test set (+ variants)
             control[t, M, r]     each one's control twin: same init and data-order seed, trained on D_real
    oracle (once per run)      trained on D_real, fixed: gives q_t and (where needed) u_t

With a ``reparation`` section (STAR), the classifiers (generators) also read the subgroups the evaluate units
recorded for the synthetic images of D_t (D_{t-1}).

A unit's identity (its key) fixes its directory in the run directory and the seed of every RNG it uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.specs import RunSpec

STAGES = ("oracle", "generator", "sample", "filter", "mix", "classifier", "control", "evaluate")
RESULT = "result.json"
#: Stages that train one classifier replicate: the treated arm (on D_t) and its control twin (on D_real).
CLASSIFIER_STAGES = ("classifier", "control")


@dataclass(frozen=True)
class Unit:
    """One work unit. Picklable: an executor may ship it to another process or machine.

    A classifier unit is one replicate ``r`` of one classifier; stage ``control`` is its control twin at the same
    (seed, generation, classifier, replicate), trained on D_real alone. The twin shares the treated unit's
    :attr:`unit_seed`, so both start from the same initialisation and draw the same data order (SPEC §2).
    """

    stage: str
    generation: int
    seed: int | None  # None: run-level (the oracle)
    name: str | None = None  # the classifier, for the classifier stages
    deps: tuple[str, ...] = ()
    replicate: int = 0

    @property
    def key(self) -> str:
        if self.seed is None:
            return self.stage
        tail = f"/{self.name}" if self.name else ""
        rep = f".rep-{self.replicate}" if self.replicate else ""
        return f"seed-{self.seed}/gen-{self.generation:03d}/{self.stage}{tail}{rep}"

    def directory(self, run_dir: Path) -> Path:
        return run_dir / self.key.replace(":", "_")

    def is_done(self, run_dir: Path) -> bool:
        return (self.directory(run_dir) / RESULT).exists()

    @property
    def unit_seed(self) -> int:
        stage = "classifier" if self.stage == "control" else self.stage  # the twin's seed
        rep = f"/{self.replicate}" if self.replicate else ""
        text = f"{self.seed}/{stage}/{self.generation}/{self.name or ''}{rep}"
        return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)

    @property
    def twin(self) -> Unit:
        """The treated unit of a control unit (and vice versa), without dependencies."""
        other = {"classifier": "control", "control": "classifier"}[self.stage]
        return Unit(other, self.generation, self.seed, self.name, (), self.replicate)


def unit(stage: str, seed: int | None, t: int, name: str | None = None, deps: Iterable[Unit] = (), *,
         replicate: int = 0) -> Unit:
    return Unit(stage, t, seed, name, tuple(d.key for d in deps), replicate)


def plan(spec: RunSpec) -> list[Unit]:
    """Every unit of the run, in an order that respects dependencies (seed by seed, generation by generation).

    Replicate 0 of each classifier is the one the next generation's filter (and labeller) reads.
    """
    oracle = unit("oracle", None, 0)
    units = [oracle]
    reps = range(spec.training.replicates)
    rep_classifiers = spec.reparation is not None and spec.reparation.classifiers
    rep_generators = spec.reparation is not None and spec.reparation.generators
    for s in spec.seeds:
        gen0 = [unit("classifier", s, 0, m, replicate=r) for m in spec.classifier_names for r in reps]
        units += gen0
        prev_classifiers = [c for c in gen0 if c.replicate == 0]
        prev_mix: Unit | None = None
        filters: list[Unit] = []
        evaluates: dict[int, Unit] = {}
        for t in range(1, spec.loop.generations + 1):
            # STAR reads the subgroups the evaluate units recorded for D_{t-1}'s (generator) or D_t's synthetic images
            star = [evaluates[g] for g in queue_generations(spec, t - 1)] if t > 1 and rep_generators else []
            gen = unit("generator", s, t, deps=[prev_mix, *star] if prev_mix else [])
            sample = unit("sample", s, t, deps=[gen])
            filt = unit("filter", s, t, deps=[sample, *prev_classifiers])
            filters.append(filt)
            evaluate = evaluates[t] = unit("evaluate", s, t, deps=[sample, filt, oracle])
            # disparity amplification: the real part is drawn by the previous classifier's outcomes
            labeler_name = spec.loop.labeler_classifier or spec.classifier_names[0]
            labeler = [c for c in prev_classifiers if c.name == labeler_name]
            mix = unit("mix", s, t, deps=[*filters, *labeler] if spec.loop.disparity_amplification else filters)
            star = [evaluates[g] for g in queue_generations(spec, t)] if rep_classifiers else []
            classifiers = [unit("classifier", s, t, m, deps=[mix, *star], replicate=r)
                           for m in spec.classifier_names for r in reps]
            controls = []
            if spec.loop.control:
                steps = spec.loop.control_budget == "steps"
                controls = [unit("control", s, t, c.name, deps=[c] if steps else [], replicate=c.replicate)
                            for c in classifiers]
            units += [gen, sample, filt, evaluate, mix, *classifiers, *controls]
            prev_classifiers, prev_mix = [c for c in classifiers if c.replicate == 0], mix
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
