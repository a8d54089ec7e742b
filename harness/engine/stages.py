"""The stages of the loop: the context a work unit reads, and one function per stage.

Every unit reads its inputs from the run directory and writes its outputs there, ``result.json`` last and every
file atomically, so a finished unit is never run again and a killed one leaves nothing behind. Each unit seeds
python, numpy and torch from ``(seed, stage, generation, name)`` alone, so its outputs do not depend on which
units ran before it in the same process: a resumed run, or one whose units ran in other processes or on other
machines (an executor's choice), ends with the same numbers.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from harness.engine.plan import RESULT, Unit, queue_generations, unit
from harness.engine.progress import NullReporter, unit_label
from harness.engine.records import (
    BatchMix,
    ClassifierMetrics,
    ClassifierResult,
    ControlBudget,
    EvaluateResult,
    FilterResult,
    GeneratorResult,
    History,
    MixResult,
    OracleResult,
    RealDraw,
    Representation,
    SampleResult,
    StageResult,
    Stopwatch,
    TrainingStats,
    TrainSize,
    VariantResult,
    parse_record,
    read_record,
)
from harness.engine.reparation import (
    StratifiedBatchSampler,
    SubgroupSource,
    annotate,
    cell_counts,
    check,
    disparity_cells,
    draw_cells,
    representation,
    resolve_target,
    star_resample,
    strata_of,
)
from harness.engine.rundir import (
    DamagedUnitError,
    load_tensors,
    read_result,
    save_tensors,
    unit_inputs,
    unit_problem,
    verify_file,
    write_result,
)
from harness.engine.selection import (
    balanced_resample,
    keep_top_per_class,
    proportional_labels,
)
from harness.engine.training import (
    TrainedClassifier,
    build_classifier,
    resolve_device,
    resolve_precision,
    split_holdout,
    train_classifier,
)
from harness.imageset import ImageSet
from harness.interfaces import (
    Dataset,
    DatasetBundle,
    Filter,
    FilterContext,
    Generator,
    Runtime,
)
from harness.measure import fid as fid_module
from harness.measure.metrics import classifier_metrics
from harness.plugin import factory
from harness.plugin.manager import Plugins
from harness.specs import RunSpec

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------- context


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RunContext:
    """Everything a unit needs, built lazily and cached per process: the resolved spec, plugins, the dataset."""

    def __init__(self, spec: RunSpec, run_dir: Path, plugins: Plugins, reporter: Any = None):
        self.spec = spec
        self.run_dir = run_dir
        self.plugins = plugins
        self.reporter = reporter or NullReporter()
        self.device = resolve_device(spec.device)
        self.precision = resolve_precision(spec.precision, self.device)
        self._trainsets: dict[tuple[int, int], ImageSet] = {}
        self._oracle: TrainedClassifier | None = None

    # ---------------------------------------------------------------- plugins

    @cached_property
    def dataset_plugin(self) -> Dataset:
        cache = (self.spec.data_root or self.run_dir.parent) / ".cache"
        return factory.create("datasets", self.spec.dataset, plugins=self.plugins, data_root=self.spec.data_root,
                              cache_dir=cache)

    @cached_property
    def data(self) -> DatasetBundle:
        return self.dataset_plugin.load()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.data.train.shape

    def runtime(self, u: Unit, out: Path) -> Runtime:
        return Runtime(self.device, self.precision, u.unit_seed, self.reporter, out / "work")  # type: ignore[arg-type]

    def new_generator(self, runtime: Runtime) -> Generator:
        c, h, _ = self.image_shape
        return factory.create(
            "generators", self.spec.generator, plugins=self.plugins, num_classes=self.data.num_classes, channels=c,
            image_size=h, class_names=self.data.class_names, runtime=runtime,
        )

    def new_filter(self) -> Filter:
        return factory.create("filters", self.spec.filter, plugins=self.plugins)

    def new_classifier(self, name: str, *, oracle: bool = False) -> TrainedClassifier:
        if oracle:
            pspec = self.spec.metrics.oracle.classifier
            num_classes = self.oracle_outputs
        else:
            pspec = next(c for c in self.spec.classifiers if c.name == name)
            num_classes = self.data.num_classes
        plugin = factory.create("classifiers", pspec, plugins=self.plugins)
        c, h, _ = self.image_shape
        return build_classifier(
            name, plugin, num_classes=num_classes, channels=c, image_size=h, device=self.device,
            precision=self.precision, batch_size=self.spec.training.eval_batch_size,
        )

    # ---------------------------------------------------------------- the oracle

    @cached_property
    def subgroups_observable(self) -> bool:
        """Whether the dataset measures subgroups from pixels (``Dataset.measure_subgroups``), e.g. colour."""
        probe = self.data.test.subset(torch.arange(min(2, len(self.data.test))))
        return self.dataset_plugin.measure_subgroups(probe.images, probe.labels) is not None

    @property
    def oracle_joint(self) -> bool:
        """The oracle predicts (class, subgroup) jointly when it has to estimate subgroups for ``u_t`` (they are
        not observable from pixels) or to annotate them for reparation (``subgroups_of_synthetic = "oracle"``),
        and every training image has a known subgroup."""
        rep = self.spec.reparation
        annotator = rep is not None and rep.subgroups_of_synthetic == "oracle"
        return (
            (not self.subgroups_observable or annotator)
            and bool((self.data.train.subgroups >= 0).all())
            and self.data.num_subgroups > 1
        )

    @property
    def oracle_outputs(self) -> int:
        return self.data.num_classes * (self.data.num_subgroups if self.oracle_joint else 1)

    @property
    def oracle(self) -> TrainedClassifier:
        """The oracle the oracle unit trained: the one it kept in this process, else loaded from its unit."""
        if self._oracle is None:
            clf = self.new_classifier("oracle", oracle=True)
            clf.model.load_state_dict(self.load_unit(unit("oracle", None, 0), "model.safetensors"))
            clf.model.eval()
            self._oracle = clf
        return self._oracle

    def keep_oracle(self, clf: TrainedClassifier) -> None:
        """Use ``clf``, just trained and saved by the oracle unit, as :attr:`oracle` in this process."""
        self._oracle = clf

    def oracle_predict(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        """``(class prediction, subgroup prediction given labels or None)`` from the oracle."""
        logits = self.oracle.logits(images)
        L = self.data.num_classes
        if not self.oracle_joint:
            return logits.argmax(1), None
        probs = logits.softmax(1).view(-1, L, self.data.num_subgroups)
        cls = probs.sum(2).argmax(1)
        given = cls if labels is None else labels
        sub = probs[torch.arange(len(given)), given].argmax(1)
        return cls, sub

    # ---------------------------------------------------------------- data of the loop

    def unit_file(self, key_unit: Unit, filename: str) -> Path:
        """The path of an output file of a finished unit, once checked against the unit's integrity record.

        :raises DamagedUnitError: the file is missing, truncated or altered.
        """
        directory = key_unit.directory(self.run_dir)
        problem = verify_file(directory, filename)
        if problem is not None:
            raise DamagedUnitError(key_unit.key, problem)
        return directory / filename

    def load_unit(self, key_unit: Unit, filename: str) -> dict[str, torch.Tensor]:
        return load_tensors(self.unit_file(key_unit, filename))

    def filtered(self, seed: int, t: int) -> ImageSet:
        """F_t: the kept candidates of generation t, with their (possibly relabelled) labels."""
        samples = ImageSet.load(self.unit_file(unit("sample", seed, t), "samples.safetensors"))
        kept = self.load_unit(unit("filter", seed, t), "filtered.safetensors")
        return samples.subset(kept["index"]).with_labels(kept["labels"])

    def parts(self, seed: int, t: int) -> tuple[torch.Tensor | None, list[tuple[int, torch.Tensor]]]:
        """What D_t is made of: the indices of its real images in D_real (None: all of D_real), and for each queue
        generation g, in order, the positions in F_g of its synthetic images."""
        if t == 0:
            return None, []
        mix = self.load_unit(unit("mix", seed, t), "mix.safetensors")
        if "real" in mix:  # drawn by the mix unit (loop.synthetic_fraction, loop.disparity_amplification)
            real = mix["real"]
        else:
            real = torch.zeros(0, dtype=torch.int64) if self.spec.loop.regime == "replace" else None
        synthetic = [(g, mix["position"][mix["generation"] == g]) for g in torch.unique(mix["generation"]).tolist()]
        return real, synthetic

    def trainset(self, seed: int, t: int) -> ImageSet:
        """D_t (SPEC §2): the real part (D_real, none, or the images the mix unit drew) plus the synthetic images
        the mix unit of generation t chose."""
        key = (seed, t)
        if key in self._trainsets:
            return self._trainsets[key]
        if t == 0:
            data = self.data.train
        else:
            real, synthetic = self.parts(seed, t)
            parts = [self.data.train] if real is None else [self.data.train.subset(real)] if real.numel() else []
            for g, positions in synthetic:
                parts.append(self.filtered(seed, g).subset(positions))
            data = ImageSet.concat(parts)
        self._trainsets = {k: v for k, v in self._trainsets.items() if k[0] == seed and k[1] >= t - 1}
        self._trainsets[key] = data
        return data

    def composition(self, seed: int, t: int, prefer: str = "pixels"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, SubgroupSource]:
        """D_t's labels, subgroups and origins, in :meth:`trainset`'s order, without its images: real subgroups
        as the dataset gives them, synthetic ones as the evaluate unit of their generation measured (pixels) or
        estimated them (oracle), ``prefer`` first (:func:`harness.engine.reparation.annotate`). Also says which.

        :raises DamagedUnitError: an evaluate unit did not record its subgroups.
        """
        train = self.data.train
        real, synthetic = self.parts(seed, t)
        idx = torch.arange(len(train)) if real is None else real
        labels, subgroups, origin = [train.labels[idx]], [train.subgroups[idx]], [train.origin[idx]]
        source: SubgroupSource = "known"
        for g, positions in synthetic:
            kept = self.load_unit(unit("filter", seed, g), "filtered.safetensors")
            found = self.load_unit(unit("evaluate", seed, g), "subgroups.safetensors")
            measured, used = annotate(found.get("pixels"), found.get("oracle"), prefer)  # type: ignore[arg-type]
            index = kept["index"][positions]
            labels.append(kept["labels"][positions])
            subgroups.append(measured[index] if measured is not None else torch.full_like(index, -1))
            origin.append(torch.full_like(index, g))
            source = used or source
        return torch.cat(labels), torch.cat(subgroups), torch.cat(origin), source

    def check_reparation(self) -> None:
        """Refuse, before any work, a reparation or disparity amplification this dataset cannot have.

        :raises ConfigError: with the reason.
        """
        data = self.data
        check(reparation=self.spec.reparation, disparity_amplification=self.spec.loop.disparity_amplification,
              num_classes=data.num_classes, num_subgroups=data.num_subgroups, subgroup_scope=data.subgroup_scope,
              real_counts=cell_counts(data.train.labels, data.train.subgroups, data.num_classes, data.num_subgroups))

    def training_representation(self, seed: int, t: int) -> Representation | None:
        """Who is in D_t (SPEC §6): :func:`harness.engine.reparation.representation` of its :meth:`composition`,
        synthetic subgroups measured from pixels where the dataset can, else the oracle's. Reads index files, no
        image. None for a dataset without subgroups, or when an evaluate unit did not record its candidates'
        subgroups (a run directory of an older bench)."""
        data = self.data
        if data.num_subgroups < 1:
            return None
        _, synthetic = self.parts(seed, t)
        if any(not (unit("evaluate", seed, g).directory(self.run_dir) / "subgroups.safetensors").exists()
               for g, _ in synthetic):
            return None
        labels, subgroups, origin, source = self.composition(seed, t)
        return Representation.model_validate(
            representation(labels, subgroups, origin, data.num_classes, data.num_subgroups, source))

    @cached_property
    def star_target(self) -> torch.Tensor:
        """STAR's target shares of the (class × subgroup) strata (:func:`harness.engine.reparation.resolve_target`)."""
        data = self.data
        assert self.spec.reparation is not None
        counts = cell_counts(data.train.labels, data.train.subgroups, data.num_classes, data.num_subgroups)
        return resolve_target(self.spec.reparation.target, counts, data.num_classes, data.num_subgroups)

    def star_strata(self, seed: int, t: int, size: int) -> tuple[torch.Tensor, SubgroupSource]:
        """The stratum of every image of D_t, for STAR, and where its synthetic images' subgroups came from."""
        assert self.spec.reparation is not None
        labels, subgroups, _, source = self.composition(seed, t, self.spec.reparation.subgroups_of_synthetic)
        if labels.numel() != size:
            raise RuntimeError(f"D_{t} of seed {seed} has {size} images and {labels.numel()} strata")
        return strata_of(labels, subgroups, self.data.num_classes, self.data.num_subgroups), source

    def classifier_of(self, seed: int, t: int, name: str) -> TrainedClassifier:
        """Classifier ``name`` of generation t (replicate 0), loaded, in eval mode."""
        clf = self.new_classifier(name)
        clf.model.load_state_dict(self.load_unit(unit("classifier", seed, t, name), "model.safetensors"))
        clf.model.eval()
        return clf

    def classifiers_of(self, seed: int, t: int) -> list[TrainedClassifier]:
        out = []
        for name in self.spec.classifier_names:
            clf = self.new_classifier(name)
            clf.model.load_state_dict(self.load_unit(unit("classifier", seed, t, name), "model.safetensors"))
            clf.model.eval()
            out.append(clf)
        return out


def fit_oracle(clf: TrainedClassifier, train: ImageSet, spec: RunSpec, runtime: Runtime, *, joint: bool = False,
               num_subgroups: int = 1) -> Mapping[str, Any]:
    """Train the oracle ``clf`` on D_real ``train`` (SPEC §4; docs/metrics.md): hold out real images first, then
    balance both parts with :func:`balanced_resample`, so duplicates never straddle training and validation.
    ``joint``: targets are ``class · G + subgroup``. Returns the training statistics."""
    gen = torch.Generator().manual_seed(runtime.seed)
    train_idx, val_idx = split_holdout(len(train), spec.training.val_fraction, gen)
    parts = []
    for idx in (train_idx, val_idx):
        part = train.subset(idx)
        part = part.subset(balanced_resample(part.labels, part.subgroups, gen))
        parts.append(part.with_labels(part.labels * num_subgroups + part.subgroups) if joint else part)
    return train_classifier(clf, parts[0], spec.training, runtime, max_epochs=spec.metrics.oracle.max_epochs,
                            patience=spec.metrics.oracle.patience, val=parts[1])


def _oracle(ctx: RunContext, u: Unit, out: Path, clock: Stopwatch) -> OracleResult:
    data = ctx.data
    clf = ctx.new_classifier("oracle", oracle=True)
    stats = fit_oracle(clf, data.train, ctx.spec, ctx.runtime(u, out), joint=ctx.oracle_joint,
                       num_subgroups=data.num_subgroups)
    save_tensors(out / "model.safetensors", clf.model.state_dict())
    ctx.keep_oracle(clf)
    cls, sub = ctx.oracle_predict(data.test.images, data.test.labels)
    known = data.test.subgroups >= 0
    sub_acc = None
    if sub is not None and bool(known.any()):
        sub_acc = (sub[known] == data.test.subgroups[known]).float().mean().item()
    train = TrainingStats.model_validate(stats)
    return OracleResult(
        classifier=ctx.spec.metrics.oracle.classifier.name,
        joint=ctx.oracle_joint,
        training="D_real with every subgroup cell oversampled to its class's largest (all images kept)",
        test_acc=(cls == data.test.labels).float().mean().item(),
        subgroup_test_acc=sub_acc,
        train=train,
        timing=clock.timing(train.images_seen),
    )


def _classifier(ctx: RunContext, u: Unit, out: Path, clock: Stopwatch) -> ClassifierResult:
    """One replicate of one classifier trained on D_t (the treated arm), or, for a ``control`` unit, its twin
    trained on D_real alone from the same initialisation and data-order seed (SPEC §2)."""
    assert u.seed is not None and u.name is not None
    data = ctx.data
    control = None
    max_steps = None
    if u.stage == "control":
        train = ctx.trainset(u.seed, 0)
        twin = u.twin
        if ctx.spec.loop.control_budget == "steps":
            record = read_record(twin, ctx.run_dir, ClassifierResult)
            max_steps = None if record is None else record.train.best_steps
            if max_steps is None:
                raise DamagedUnitError(twin.key, "it has no result with its optimizer steps for the control twin")
        control = ControlBudget(mode=ctx.spec.loop.control_budget, twin=twin.key, steps=max_steps)
    else:
        train = ctx.trainset(u.seed, u.generation)
    sampler = None
    rep = ctx.spec.reparation
    if rep is not None and rep.classifiers:  # cla-STAR: stratified batches (Wyllie et al.)
        strata, source = ctx.star_strata(u.seed, 0 if u.stage == "control" else u.generation, len(train))
        sampler = StratifiedBatchSampler(strata, ctx.star_target, rep.budget, num_classes=data.num_classes,
                                         num_subgroups=data.num_subgroups, source=source)
    clf = ctx.new_classifier(u.name)
    stats = train_classifier(clf, train, ctx.spec.training, ctx.runtime(u, out), max_steps=max_steps,
                             sampler=sampler)
    preds = {"test": clf.predict(data.test.images)}
    for vname, variant in data.variants.items():
        preds[f"variant/{vname}"] = clf.predict(variant.images)
    metrics = classifier_metrics(
        preds["test"].numpy(), data.test.labels.numpy(), data.test.subgroups.numpy(),
        num_classes=data.num_classes, num_subgroups=data.num_subgroups, scope=data.subgroup_scope,
    )
    variants = {}
    for vname, variant in data.variants.items():
        acc = (preds[f"variant/{vname}"] == variant.labels).float().mean().item()
        variants[vname] = VariantResult(acc=acc, drop=metrics["acc"] - acc)
    save_tensors(out / "model.safetensors", clf.model.state_dict())
    save_tensors(out / "predictions.safetensors", preds)
    synthetic = int((train.origin > 0).sum())
    training = TrainingStats.model_validate(stats)
    return ClassifierResult(
        metrics=ClassifierMetrics.model_validate(metrics),
        variants=variants,
        train=training,
        train_size=TrainSize(real=len(train) - synthetic, synthetic=synthetic),
        model=dict(clf.plugin.describe()),
        control=control,
        reparation=None if sampler is None else BatchMix.model_validate(sampler.summary()),
        timing=clock.timing(training.images_seen),
    )


def _generator(ctx: RunContext, u: Unit, out: Path, clock: Stopwatch) -> GeneratorResult:
    assert u.seed is not None
    train = ctx.trainset(u.seed, u.generation - 1)
    mix = None
    rep = ctx.spec.reparation
    if rep is not None and rep.generators:  # gen-STAR: the training set resampled by strata before fit
        data = ctx.data
        strata, source = ctx.star_strata(u.seed, u.generation - 1, len(train))
        index, summary = star_resample(strata, ctx.star_target, rep.budget, ctx.spec.training.batch_size,
                                       torch.Generator().manual_seed(u.unit_seed), num_classes=data.num_classes,
                                       num_subgroups=data.num_subgroups, source=source)
        train, mix = train.subset(index), BatchMix.model_validate(summary)
    gen = ctx.new_generator(ctx.runtime(u, out))
    stats = dict(gen.fit(train))
    history = stats.pop("history", None)  # the plugin's training curves (Generator.fit), kept typed beside its stats
    try:
        history = None if history is None else History.model_validate(history)
    except ValidationError as exc:
        raise RuntimeError(f"generator {ctx.spec.generator.name!r} returned a 'history' that is not a training "
                           f"curve: {exc.errors()[0]['msg']}") from None
    save_tensors(out / "model.safetensors", gen.state_dict())
    return GeneratorResult(train=stats, train_size=len(train), history=history, reparation=mix,
                           timing=clock.timing(int(stats.get("images_seen", 0))))


def _sample(ctx: RunContext, u: Unit, out: Path, clock: Stopwatch) -> SampleResult:
    assert u.seed is not None
    runtime = ctx.runtime(u, out)
    gen = ctx.new_generator(runtime)
    gen.load_state_dict(ctx.load_unit(unit("generator", u.seed, u.generation), "model.safetensors"))
    real = ctx.data.train
    total = ctx.spec.loop.samples_per_generation or len(real)
    labels = proportional_labels(real.class_counts(ctx.data.num_classes), total, torch.Generator().manual_seed(runtime.seed))
    images = gen.sample(labels)
    expected = (total, *real.shape)
    if images.dtype != torch.uint8 or tuple(images.shape) != expected:
        raise RuntimeError(
            f"generator {ctx.spec.generator.name!r} returned {images.dtype} {tuple(images.shape)}; "
            f"the contract is uint8 {expected}"
        )
    ImageSet.create(images, labels, origin=u.generation).save(out / "samples.safetensors")
    return SampleResult(count=total, timing=clock.timing(total))


def _filter(ctx: RunContext, u: Unit, out: Path, clock: Stopwatch) -> FilterResult:
    assert u.seed is not None
    t, L = u.generation, ctx.data.num_classes
    candidates = ImageSet.load(ctx.unit_file(unit("sample", u.seed, t), "samples.safetensors"))
    plugin = ctx.new_filter()
    spec = ctx.spec
    relabel = spec.loop.labeler == "previous_classifier"
    previous = ctx.classifiers_of(u.seed, t - 1) if (plugin.needs_classifiers or relabel) else []
    runtime = ctx.runtime(u, out)
    review_dir = ctx.run_dir / "review" / f"seed-{u.seed}" / f"gen-{t:03d}"
    context = FilterContext(t, tuple(previous), ctx.data.class_names, runtime, review_dir, u.seed, ctx.run_dir)
    scores = torch.as_tensor(plugin.score(candidates, context), dtype=torch.float32).flatten()
    if scores.numel() != len(candidates) or not bool(torch.isfinite(scores).all()):
        raise RuntimeError(f"filter {spec.filter.name!r} must return one finite score per candidate")
    mask = plugin.select(scores, candidates.labels, spec.filter.keep)
    if mask is None:
        mask = keep_top_per_class(scores, candidates.labels, spec.filter.keep, L)
    index = torch.nonzero(mask).flatten()
    labels = candidates.labels[index]
    changed = None
    if relabel:
        labeler = spec.loop.labeler_classifier or spec.classifier_names[0]
        handle = next(c for c in previous if c.name == labeler)
        new = handle.predict(candidates.images[index])
        changed = int((new != labels).sum())
        labels = new
    save_tensors(out / "filtered.safetensors", {"index": index, "labels": labels, "scores": scores})
    per_class = torch.bincount(candidates.labels, minlength=L)
    kept = torch.bincount(candidates.labels[index], minlength=L)
    return FilterResult(
        kept_per_class=kept.tolist(),
        dropped_per_class=(per_class - kept).tolist(),
        kept=int(index.numel()),
        relabeled=changed,
        filter=dict(plugin.describe()),
        timing=clock.timing(len(candidates)),
    )


def _mix(ctx: RunContext, u: Unit, out: Path, clock: Stopwatch) -> MixResult:
    assert u.seed is not None
    spec, t = ctx.spec, u.generation
    queue = queue_generations(spec, t)
    sizes = [int(ctx.load_unit(unit("filter", u.seed, g), "filtered.safetensors")["index"].numel()) for g in queue]
    gens = torch.repeat_interleave(torch.tensor(queue, dtype=torch.int64), torch.tensor(sizes, dtype=torch.int64))
    pos = torch.cat([torch.arange(n, dtype=torch.int64) for n in sizes])
    n_real = len(ctx.data.train)
    want = int(math.floor(spec.loop.mix_ratio * n_real + 0.5))
    if want < gens.numel():
        chosen = torch.sort(torch.randperm(gens.numel(), generator=torch.Generator().manual_seed(u.unit_seed))[:want]).values
        gens, pos = gens[chosen], pos[chosen]
    tensors = {"generation": gens, "position": pos}
    real_count = 0 if spec.loop.regime == "replace" else n_real
    draw = None
    if spec.loop.synthetic_fraction is not None or spec.loop.disparity_amplification:
        # the real part is drawn: n_real − want fresh images (synthetic_fraction), or n_real (disparity alone)
        count = n_real - want if spec.loop.synthetic_fraction is not None else real_count
        tensors["real"], draw = _draw_real(ctx, u, count)
        real_count = int(tensors["real"].numel())
    save_tensors(out / "mix.safetensors", tensors)
    return MixResult(
        queue=queue,
        pool=int(sum(sizes)),
        real=real_count,
        synthetic=int(gens.numel()),
        synthetic_per_generation={str(g): int((gens == g).sum()) for g in queue},
        real_draw=draw,
        timing=clock.timing(0),
    )


def _draw_real(ctx: RunContext, u: Unit, count: int) -> tuple[torch.Tensor, RealDraw]:
    """The real part of D_t: ``count`` images of D_real, uniformly without replacement, or with
    ``loop.disparity_amplification`` by the previous classifier's per-subgroup outcomes (docs/wyllie.md)."""
    assert u.seed is not None
    real, L, G = ctx.data.train, ctx.data.num_classes, ctx.data.num_subgroups
    gen = torch.Generator().manual_seed(u.unit_seed + 1)  # not the synthetic choice's stream
    cells = real.labels * (G + 1) + torch.where(real.subgroups >= 0, real.subgroups, torch.full_like(real.labels, G))
    name, shares, repeated, unserved = None, None, 0, 0
    if ctx.spec.loop.disparity_amplification:
        name = ctx.spec.loop.labeler_classifier or ctx.spec.classifier_names[0]
        predicted = ctx.classifier_of(u.seed, u.generation - 1, name).predict(real.images)
        counts, shares = disparity_cells(predicted, real.subgroups, L, G, count)
        index, repeated, unserved = draw_cells(cells, counts.flatten(), gen)
    else:
        index = torch.sort(torch.randperm(len(real), generator=gen)[:count]).values
    drawn = torch.bincount(cells[index], minlength=L * (G + 1)).view(L, G + 1)
    return index, RealDraw(
        mode="disparity" if name else "fresh", count=int(index.numel()), classifier=name,
        predicted=None if shares is None else shares.tolist(), cells=drawn.tolist(), repeated=repeated,
        unserved=unserved,
    )


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def _evaluate(ctx: RunContext, u: Unit, out: Path, clock: Stopwatch) -> EvaluateResult:
    assert u.seed is not None
    data, t = ctx.data, u.generation
    L, G = data.num_classes, data.num_subgroups
    samples = ImageSet.load(ctx.unit_file(unit("sample", u.seed, t), "samples.safetensors"))
    kept = ctx.load_unit(unit("filter", u.seed, t), "filtered.safetensors")
    predicted, sub = ctx.oracle_predict(samples.images, samples.labels)
    q = (predicted == samples.labels).float().mean().item()

    measured = ctx.dataset_plugin.measure_subgroups(samples.images, samples.labels)
    # each candidate's subgroup, measured and/or estimated: D_t's representation and STAR's strata read them
    annotations = {"count": torch.tensor([len(samples)], dtype=torch.int64)}
    annotations |= {k: v.cpu().to(torch.int64).contiguous() for k, v in (("pixels", measured), ("oracle", sub))
                    if v is not None}
    save_tensors(out / "subgroups.safetensors", annotations)
    u_source = "pixels"
    if measured is None:
        measured, u_source = sub, "oracle"
    u_t, per_class_u = None, None
    if measured is not None and G > 1:
        real = data.train
        known = real.subgroups >= 0
        tvs = []
        for c in range(L):
            r = torch.bincount(real.subgroups[known & (real.labels == c)], minlength=G).double()
            mc = measured[samples.labels == c].long()
            g = torch.bincount(mc[mc >= 0], minlength=G).double()  # -1: not measurable (e.g. a black image)
            tvs.append(total_variation(r / r.sum(), g / g.sum()) if r.sum() > 0 and g.sum() > 0 else None)
        defined = [v for v in tvs if v is not None]
        u_t = float(np.mean(defined)) if defined else None
        per_class_u = tvs

    def hist(x: torch.Tensor) -> list[float]:
        h = torch.bincount(x, minlength=L).double()
        return (h / h.sum()).tolist() if h.sum() > 0 else [0.0] * L

    scores = _fid(ctx, samples)
    return EvaluateResult(
        q=q,
        u=u_t,
        u_per_class=per_class_u,
        u_source=u_source if u_t is not None else None,
        class_balance=hist(kept["labels"]),
        oracle_class_balance=hist(predicted),
        fid=scores.get("fid"),
        kid=scores.get("kid"),
        kid_std=scores.get("kid_std"),
        fid_note=scores.get("fid_note"),
        fid_provenance=scores.get("fid_provenance"),
        timing=clock.timing(len(samples)),
    )


def _fid(ctx: RunContext, samples: ImageSet) -> dict[str, Any]:
    fid = ctx.spec.metrics.fid
    if fid.backbone == "none":
        return {"fid_note": "FID/KID disabled by the spec (metrics.fid.backbone = 'none')"}
    return fid_module.generator_scores(samples, ctx.data.test, fid, device=ctx.device,
                                       cache=fid_module.cache_dir(ctx.run_dir), reporter=ctx.reporter)


STAGE_FUNCS: dict[str, Callable[[RunContext, Unit, Path, Stopwatch], StageResult]] = {
    "oracle": _oracle,
    "generator": _generator,
    "sample": _sample,
    "filter": _filter,
    "mix": _mix,
    "classifier": _classifier,
    "control": _classifier,
    "evaluate": _evaluate,
}



def execute(ctx: RunContext, u: Unit) -> StageResult:
    """Run one unit unless it is finished, intact and up to date; return its result. Writes ``result.json``
    last, atomically, with the unit's integrity record (:func:`harness.engine.rundir.write_result`).

    A finished unit that is damaged, or whose inputs changed since, is computed again after one warning (logger
    ``harness.engine.stages``) naming the unit and the file.
    """
    out = u.directory(ctx.run_dir)
    if (out / RESULT).exists():
        problem = unit_problem(ctx.run_dir, u)
        if problem is None:
            try:
                return parse_record(u, read_result(out))
            except DamagedUnitError as exc:  # intact on disk, but not a result of this stage (edited, or old)
                problem = exc.problem
        log.warning("unit %s: %s; computing it again", u.key, problem)
        (out / RESULT).unlink(missing_ok=True)
    inputs = unit_inputs(ctx.run_dir, u)
    seed_everything(u.unit_seed)
    clock = Stopwatch(threads=torch.get_num_threads)
    with ctx.reporter.stage(unit_label(u)):
        result = STAGE_FUNCS[u.stage](ctx, u, out, clock)
    write_result(out, result.model_dump(mode="json"), inputs=inputs)
    return result
