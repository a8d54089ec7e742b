"""What a run is: the pydantic run spec, its presets, and how files and flags build one.

A spec is built in layers, each deep-merged over the last: the preset (``quick`` by default), a config file
(TOML, YAML or JSON), then command-line flags. Core-owned choices are closed ``Literal`` sets; plugin-owned
choices are ``name`` + ``options``, and the options are validated by the plugin's own ``Options`` model when the
spec is *resolved* against the installed plugins. The resolved spec (defaults filled in) is what gets hashed,
recorded in the results and compared between leaderboard entries.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import ConfigError, format_validation_error
from harness.plugin import factory
from harness.plugin.manager import Plugins


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSpec(Spec):
    """A plugin by registry name, with its options (validated by the plugin's ``Options`` model)."""

    name: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class FilterSpec(PluginSpec):
    """The filter and the fraction of each class's candidates it keeps (SPEC §1)."""

    keep: float = Field(0.9, gt=0.0, le=1.0)


# Upper bounds on the fields that size memory or time: a value no machine can hold is refused when the spec is
# validated, naming the field and the bound, instead of failing hours into a run. Derived for the largest machine
# bench targets (1 TiB of host memory, one 141 GB accelerator) and the smallest images it has (3×28×28 uint8,
# 2,352 B); docs/reliability.md shows the arithmetic.
#: S: C_t is held whole as uint8 by the sample, filter and evaluate units, and the queue holds up to K of them:
#: 10^8 × 2,352 B = 235 GB, a quarter of 1 TiB.
MAX_SAMPLES_PER_GENERATION = 100_000_000
#: One batch in float32 at 224 px (the ImageNet classifiers' native side): 65,536 × 3 × 224² × 4 B = 39 GB of input
#: alone, before any activation.
MAX_BATCH_SIZE = 65_536
#: FID/KID features are 2,048 float64 per image (16 KiB): 10^7 images are 164 GB.
MAX_FID_SAMPLES = 10_000_000
#: KID holds three m×m float64 kernels on the accelerator: 3 × 8 B × 50,000² = 60 GB.
MAX_KID_SUBSET = 50_000
#: Seeds (replicates) are full chains, run one after another by the local executor: 1,000 chains of the quick
#: preset (a few minutes each on 2 CPU cores) take days.
MAX_SEEDS = 1000
#: Bootstrap resamples each refit the amplification model: 10^5 take minutes.
MAX_BOOTSTRAP = 100_000
#: Replicates multiply every classifier unit (and its control twin): 100 × 2 arms × 5 classifiers is a thousand
#: trainings per generation, past which a study should add seeds instead.
MAX_REPLICATES = 100


class LoopSpec(Spec):
    """The self-consuming loop (SPEC §2)."""

    generations: int = Field(5, ge=0, le=1000, description="T: generations after the real-data generation 0.")
    samples_per_generation: int | None = Field(
        None, ge=1, le=MAX_SAMPLES_PER_GENERATION,
        description="S = |C_t|, candidates generated per generation. None: |D_real|.",
    )
    queue_capacity: int = Field(3, ge=1, description="K: filtered synthetic sets kept (regime 'stack').")
    mix_ratio: float = Field(
        0.5, ge=0.0, le=100.0, description="Synthetic part of D_t = round(mix_ratio × |D_real|) images."
    )
    regime: Literal["stack", "accumulate", "replace"] = "stack"
    labeler: Literal["conditioning", "previous_classifier"] = "conditioning"
    labeler_classifier: str | None = Field(
        None, description="With labeler=previous_classifier: which classifier labels (default: the first)."
    )
    control: bool = Field(
        True, description="Train every classifier replicate's control twin on D_real alone at t >= 1 (SPEC §2)."
    )
    control_budget: Literal["steps", "recipe"] = Field(
        "steps",
        description="steps: the twin's optimizer steps up to its kept weights, on D_real (no early stopping); "
        "recipe: the plain recipe on D_real (early stopping), as at generation 0.",
    )
    synthetic_fraction: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Wyllie et al.'s synthetic_perc: |D_t| = |D_real| for t >= 1, this fraction synthetic (it sets "
        "mix_ratio) and the rest real images drawn afresh from D_real every generation, whatever the regime "
        "(which then only chooses the queue). None: the real part is all of D_real, or none in regime 'replace'.",
    )
    disparity_amplification: bool = Field(
        False,
        description="Wyllie et al.'s disparity amplification: the real part of D_t is drawn so that within each "
        "subgroup its classes follow f_{t-1}'s predicted labels on D_real (docs/wyllie.md).",
    )

    @model_validator(mode="before")
    @classmethod
    def _fraction_sets_mix_ratio(cls, data: Any) -> Any:
        # under synthetic_fraction |D_t| = |D_real|, so the synthetic part round(p·|D_real|) is mix_ratio = p
        if isinstance(data, Mapping) and data.get("synthetic_fraction") is not None:
            data = {**data, "mix_ratio": data["synthetic_fraction"]}
        return data

    @model_validator(mode="after")
    def _amplification_needs_real_data(self) -> LoopSpec:
        if self.disparity_amplification and (
            self.synthetic_fraction == 1.0 or (self.synthetic_fraction is None and self.regime == "replace")
        ):
            raise ValueError(
                "loop.disparity_amplification acts on the real part of D_t, and this loop has none (regime "
                "'replace' without synthetic_fraction, or synthetic_fraction = 1); set loop.synthetic_fraction below 1"
            )
        return self


class TrainingSpec(Spec):
    """The classifier training recipe. The harness owns it so that entries are comparable (SPEC §1)."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH_SIZE)
    max_epochs: int = Field(50, ge=1, le=1000)
    patience: int = Field(3, ge=1, description="Early stopping: epochs without a better held-out accuracy.")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Held-out split of D_t for early stopping.")
    augment: Literal["none", "flip", "crop", "crop-flip"] = "none"
    eval_batch_size: int = Field(512, ge=1, le=MAX_BATCH_SIZE)
    replicates: int = Field(
        1, ge=1, le=MAX_REPLICATES,
        description="R: each classifier is trained R times per (seed, generation), each its own init and data order.",
    )


class OracleSpec(Spec):
    """The oracle (SPEC §4): trained once per run on D_real, fixed; gives q_t (and u_t when not observable)."""

    classifier: PluginSpec = Field(
        default_factory=lambda: PluginSpec(name="lenet", options={"width": 2, "dropout": 0.5}),
        description="An instrument, not a subject: wider than the study's LeNet, with dropout (docs/metrics.md).",
    )
    max_epochs: int = Field(30, ge=1, le=1000)
    patience: int = Field(4, ge=1, description="Early stopping of the oracle (held-out accuracy).")


class FidSpec(Spec):
    """FID/KID (SPEC §4). ``backbone="none"`` turns them off explicitly (reported as null, with the reason)."""

    backbone: Literal["inception-tf2015", "random-conv-test", "none"] = Field(
        "inception-tf2015",
        description="inception-tf2015: the standard; random-conv-test: a fixed random net, NOT comparable (tests).",
    )
    samples: int = Field(10_000, ge=2, le=MAX_FID_SAMPLES, description="Generated images used (at most |C_t|).")
    real_samples: int = Field(10_000, ge=2, le=MAX_FID_SAMPLES, description="Real test images used (at most |test|).")
    kid_subset_size: int = Field(1000, ge=2, le=MAX_KID_SUBSET)


class VerdictSpec(Spec):
    """The verdict of SPEC §5b: the paired effect of the synthetic data on the bias measure."""

    epsilon: float = Field(0.01, gt=0.0, le=1.0, description="Practical-equivalence margin, in units of B.")
    last_generations: int | None = Field(
        None, ge=1, description="Average the effect over the last k generations only (None: all of t = 1..T)."
    )
    resamples: int = Field(2000, ge=2000, le=MAX_BOOTSTRAP, description="Hierarchical bootstrap resamples.")


class MetricsSpec(Spec):
    fid: FidSpec = Field(default_factory=FidSpec)
    oracle: OracleSpec = Field(default_factory=OracleSpec)
    bias: Literal["1-meo", "md", "gap"] = Field("1-meo", description="B_t of SPEC §5.")
    bootstrap: int = Field(1000, ge=10, le=MAX_BOOTSTRAP,
                           description="Bootstrap resamples (over seeds) for the fit's intervals.")
    verdict: VerdictSpec = Field(default_factory=VerdictSpec)


class ReparationSpec(Spec):
    """Wyllie et al.'s algorithmic reparation by stratified sampling (STAR; SPEC §2, docs/wyllie.md).

    Strata are (class × subgroup) cells. Each training batch of ``batch_size`` images is chosen from
    ``batch_size + budget`` random candidates: up to ``floor(target × batch_size)`` of each stratum, the rest of the
    batch from the remaining candidates at random.
    """

    apply_to: Literal["classifiers", "generators", "both"] = Field(
        "classifiers",
        description="classifiers: every classifier's training batches (cla-STAR, control twins and generation 0 "
        "too); generators: each generator's training set, resampled before fit (gen-STAR); both.",
    )
    target: Literal["uniform"] | tuple[tuple[float, ...], ...] = Field(
        "uniform",
        description="uniform: equal shares of the (class × subgroup) cells D_real has; or an L×G matrix of "
        "proportions (rows = classes, normalised).",
    )
    budget: int = Field(
        128, ge=0, le=MAX_BATCH_SIZE,
        description="Extra candidates drawn per batch (Wyllie et al.'s rep_budget); 0: plain random batches.",
    )
    subgroups_of_synthetic: Literal["pixels", "oracle"] = Field(
        "pixels",
        description="pixels: the dataset's measurement where it has one, else the oracle's prediction; oracle: "
        "the oracle's prediction (Wyllie et al.'s annotator).",
    )

    @field_validator("target")
    @classmethod
    def _proportions(cls, target: Any) -> Any:
        if target == "uniform":
            return target
        widths = {len(row) for row in target}
        if not target or len(widths) != 1 or 0 in widths:
            raise ValueError("reparation.target must be 'uniform' or a non-empty L×G matrix (rows of equal length)")
        values = [v for row in target for v in row]
        if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
            raise ValueError("reparation.target proportions must be finite, non-negative and not all 0")
        return target

    @property
    def classifiers(self) -> bool:
        return self.apply_to in ("classifiers", "both")

    @property
    def generators(self) -> bool:
        return self.apply_to in ("generators", "both")


class RunSpec(Spec):
    """One run: a dataset, a generator, classifiers, a filter, the loop, the recipe, the metrics, the seeds."""

    preset: str | None = None
    dataset: PluginSpec
    generator: PluginSpec
    classifiers: tuple[PluginSpec, ...] = Field(min_length=1)
    filter: FilterSpec = Field(default_factory=lambda: FilterSpec(name="none", keep=1.0))
    loop: LoopSpec = Field(default_factory=LoopSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    reparation: ReparationSpec | None = Field(None, description="STAR (Wyllie et al.); None: no reparation.")
    seeds: tuple[int, ...] = Field((0,), min_length=1, max_length=MAX_SEEDS)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N. Not part of the spec hash.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    data_root: Path | None = Field(None, description="Where datasets live. Not part of the spec hash.")
    out: Path = Field(Path("runs"), description="Parent of the run directory. Not part of the spec hash.")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be non-negative")
        return seeds

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit()):
            return device
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")

    @model_validator(mode="after")
    def _classifier_names(self) -> RunSpec:
        names = [c.name for c in self.classifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"classifiers must be distinct, got {names}")
        lc = self.loop.labeler_classifier
        if lc is not None and lc not in names:
            raise ValueError(f"loop.labeler_classifier {lc!r} is not one of the classifiers {names}")
        return self

    # ---------------------------------------------------------------- identity

    def identity(self) -> dict[str, Any]:
        """The normalised spec without execution-only fields: what the hash covers.

        Fields added after entries were published are left out while they hold their defaults (``reparation``,
        ``loop.synthetic_fraction``, ``loop.disparity_amplification``), so the spec_hash of a spec that does not
        use them is what it was before they existed."""
        data = self.model_dump(mode="json", exclude={"device", "data_root", "out"})
        for key, default in ((("reparation",), None), (("loop", "synthetic_fraction"), None),
                             (("loop", "disparity_amplification"), False)):
            node = data
            for part in key[:-1]:
                node = node[part]
            if node.get(key[-1]) == default:
                node.pop(key[-1])
        return data

    def spec_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def run_id(self) -> str:
        return f"{self.dataset.name}-{self.generator.name}-{self.spec_hash()[:10]}".replace(":", "_")

    @property
    def run_dir(self) -> Path:
        return self.out / self.run_id

    @property
    def classifier_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classifiers)


# --------------------------------------------------------------------------------------------------- presets

#: ``quick`` — the default job: finishes in minutes on 2 CPU cores with the embedded MNIST (no download).
QUICK: dict[str, Any] = {
    "dataset": {"name": "colored-mnist", "options": {"source": "embedded", "bias": "biased"}},
    "generator": {"name": "dcgan", "options": {"epochs": 10, "loss": "bce", "spectral_norm": False, "lr_d": 2e-4,
                                               "minibatch_std": 4, "conditioning": "cbn", "augment_shift": 0.0,
                                               "mode_seeking": 1.0}},
    "classifiers": ["lenet", "timm:test_resnet"],
    "filter": {"name": "uncertainty", "keep": 0.9},
    "loop": {"generations": 3, "samples_per_generation": 2000, "queue_capacity": 3, "mix_ratio": 0.5,
             "control": True},
    # Converged classifiers (issue 13): early stopping, not the epoch cap, ends training. On the embedded digits
    # generation-0 LeNet stops after ~24 epochs at test accuracy 0.915 (lr 1e-3 needs ~27 epochs for 0.894; the
    # old 4-epoch cap measured an under-trained 0.54); timm's test_resnet stops after ~9 at 0.92. T = 3 (was 5)
    # pays for the longer training and the control twins (docs/benchmarks.md).
    "training": {"max_epochs": 30, "patience": 3, "batch_size": 128, "lr": 2e-3, "replicates": 1},
    "metrics": {"fid": {"backbone": "none"}},
    "seeds": [0],
}

#: ``paper`` — Zhang et al.'s defaults (SPEC §2): T = 10, K = 3, Adam, ≤ 50 epochs with early stopping, 3 seeds;
#: ``keep`` and ``T`` per dataset come from the dataset plugin's ``paper_defaults``.
PAPER: dict[str, Any] = {
    "dataset": {"name": "colored-mnist", "options": {"bias": "biased"}},
    "generator": {"name": "dcgan", "options": {}},
    "classifiers": ["lenet", "alexnet", "vgg19", "resnet50", "mobilenet-v3"],
    "filter": {"name": "uncertainty", "keep": 0.9},
    "loop": {"generations": 10, "samples_per_generation": None, "queue_capacity": 3, "mix_ratio": 0.5,
             "control": True},
    "training": {"optimizer": "adam", "lr": 1e-3, "max_epochs": 50, "patience": 5, "replicates": 3},
    "metrics": {"fid": {"backbone": "inception-tf2015", "samples": 10_000, "real_samples": 10_000}},
    "seeds": [0, 1, 2],
}

#: The ``paper`` oracle of the natural-image datasets (their ``paper_defaults``): the MNIST-sized LeNet would
#: misjudge most generated images (docs/metrics.md); ResNet-50 from scratch on D_real, the zoo's strongest
#: from-scratch model.
PAPER_IMAGE_ORACLE: dict[str, Any] = {"classifier": {"name": "resnet50"}, "max_epochs": 50, "patience": 5}

PRESETS: dict[str, dict[str, Any]] = {"quick": QUICK, "paper": PAPER}


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` wins; mappings merge recursively. A plugin whose ``name`` changes loses the old ``options``."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, str) and isinstance(value, Mapping) and key in ("dataset", "generator", "filter"):
            old = {"name": old}
        if isinstance(value, str) and isinstance(old, Mapping) and key in ("dataset", "generator", "filter"):
            value = {"name": value}
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            if "name" in value and old.get("name") != value["name"]:
                old = {k: v for k, v in old.items() if k != "options"}
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON spec file into a dict (``ConfigError`` on any problem)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config file {path}: it is not UTF-8 text") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - parser errors vary by format
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot parse config file {path}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["loop.mix_ratio=0.3", "seeds=[0,1]"]`` → nested dict; values parsed as YAML scalars/lists."""
    import yaml

    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY.PATH=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with another --set")
        node[parts[-1]] = value
    return out


def build_spec(
    preset: str | None = "quick",
    config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    paper_defaults: Callable[[str], Mapping[str, Any]] | None = None,
) -> RunSpec:
    """Preset ← the dataset's paper defaults (``paper`` only) ← config file ← flags, validated.

    Plugin options are checked later, against the installed plugins, by :func:`resolve_spec`.
    """
    config = dict(config or {})
    preset = (overrides or {}).get("preset") or config.pop("preset", None) or preset
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
    user = deep_merge(config, {k: v for k, v in (overrides or {}).items() if k != "preset"})
    layers: dict[str, Any] = copy.deepcopy(PRESETS[preset]) if preset else {}
    if preset == "paper" and paper_defaults is not None:
        dataset = deep_merge(layers, user).get("dataset")
        name = dataset.get("name") if isinstance(dataset, Mapping) else dataset
        if isinstance(name, str):
            layers = deep_merge(layers, dict(paper_defaults(name)))
    layers = deep_merge(layers, user)
    layers["preset"] = preset
    try:
        return RunSpec.model_validate(layers)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model=RunSpec)) from None


def resolve_spec(spec: RunSpec, plugins: Plugins) -> RunSpec:
    """Check every plugin name against its registry and normalise its options with its ``Options`` model
    (:func:`harness.plugin.factory.resolve`: the same validation that builds the plugin). Classifiers (and the
    oracle) also run :meth:`~harness.interfaces.Classifier.preflight`: their model names and weights."""

    def norm(kind: str, p: PluginSpec) -> dict[str, Any]:
        # a classifier's unknown model name or missing weights fail now, not after the oracle trained
        resolved = factory.preflight(kind, p, plugins) if kind == "classifiers" else factory.resolve(kind, p, plugins)
        return {**p.model_dump(), "options": resolved.options.model_dump(mode="json")}

    data = spec.model_dump()
    data["dataset"] = norm("datasets", spec.dataset)
    data["generator"] = norm("generators", spec.generator)
    data["classifiers"] = [norm("classifiers", c) for c in spec.classifiers]
    data["filter"] = norm("filters", spec.filter)
    oracle = spec.metrics.oracle.classifier
    data["metrics"]["oracle"]["classifier"] = norm("classifiers", oracle)
    return RunSpec.model_validate(data)
