"""Figures of a finished (or partial) run, like Zhang et al.'s: PNGs written with matplotlib's Agg renderer.

===================  =========================================================================================
``metrics.png``      acc, meo, di, md vs generation, one line per classifier, 95% band over seeds (Fig. 3a)
``worst_k.png``      worst-k subgroup accuracy by rank k, per classifier, at selected generations (Fig. 3b)
``generator.png``    FID (Table 1), label fidelity q_t and unbalanced generation u_t per generation
``amplification.png`` bias B_t and amplification A_t = B_{t+1}/B_t per classifier, with A_bar
``samples.png``      generated samples, one row per generation, columns grouped by class (Figs. 10–12)
===================  =========================================================================================

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (no ``pyplot``, no global backend
switch), so calling :func:`write_report` from a notebook or a GUI program changes nothing there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import BenchError

CLASSIFIER_METRICS = (("acc", "accuracy"), ("meo", "MEO (eq. 2)"), ("di", "DI (eq. 3)"), ("md", "MD (eq. 4)"))

#: The values each quantity can take (``None``: unbounded on that side). Intervals are drawn clipped to them: a
#: t-interval of a mean accuracy near 1 can reach past 1, which no accuracy can.
METRIC_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    **{k: (0.0, 1.0) for k in ("acc", "meo", "md", "worst", "dp", "eodds", "bias_gap", "q", "u", "B")},
    "di": (None, 1.0),  # 1 − mean |P_i/P_j − 1|: negative under strong disparity
    "fid": (0.0, None),
    "kid": (None, None),  # the unbiased estimator can be slightly negative
    "A": (0.0, None),
    "A_bar": (0.0, None),
}


def clip_interval(key: str, low: float | None, high: float | None) -> tuple[float | None, float | None]:
    """``(low, high)`` moved inside :data:`METRIC_BOUNDS` of ``key`` (unchanged for an unknown key or None)."""
    lower, upper = METRIC_BOUNDS.get(key, (None, None))

    def clip(v: float | None) -> float | None:
        if v is None or v != v:
            return v
        if lower is not None and v < lower:
            return lower
        if upper is not None and v > upper:
            return upper
        return v

    return clip(low), clip(high)


def bias_stats(results: Any, classifier: str) -> list[tuple[float | None, float | None, float | None]]:
    """``(B_t, low, high)`` per finished generation for one classifier: ``B_t`` as the amplification block holds
    it, and the 95% interval of the metric it is made of (``1-meo``: ``1 − meo``; ``md``; ``gap``: ``bias_gap``)
    turned into one of ``B_t``, inside ``[0, 1]``. ``(None, None, None)`` where undefined."""
    amp = results.amplification
    measure = amp.measure if amp is not None else results.spec.get("metrics", {}).get("bias", "1-meo")
    pc = amp.per_classifier.get(classifier) if amp is not None else None
    out = []
    for g in results.generations:
        stat = getattr(g.classifiers[classifier].mean, {"1-meo": "meo", "md": "md", "gap": "bias_gap"}[measure])
        mean = pc.bias[g.generation] if pc is not None and g.generation < len(pc.bias) else None
        if mean is None and stat.mean is not None:
            mean = 1.0 - stat.mean if measure == "1-meo" else stat.mean
        low, high = stat.ci_low, stat.ci_high
        if measure == "1-meo" and low is not None and high is not None:
            low, high = 1.0 - high, 1.0 - low
        low, high = clip_interval("B", low, high)
        out.append((mean, low, high))
    return out


def _figure(ncols: int, nrows: int = 1, *, width: float = 3.6, height: float = 3.0) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, width * ncols), height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _series(stats: list[Any]) -> tuple[list[float], list[float], list[float], bool]:
    """Means and interval bounds (NaN where undefined) from a list of ``Stat`` (or None)."""
    nan = float("nan")
    mean = [nan if s is None or s.mean is None else s.mean for s in stats]
    lo = [nan if s is None or s.ci_low is None else s.ci_low for s in stats]
    hi = [nan if s is None or s.ci_high is None else s.ci_high for s in stats]
    return mean, lo, hi, any(s is not None and s.ci_low is not None for s in stats)


def classifier_names(results: Any) -> list[str]:
    return [c["name"] if isinstance(c, dict) else c for c in results.spec["classifiers"]]


def _int_xaxis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def metrics_figure(results: Any, path: Path) -> Path:
    """Fig. 3a: overall accuracy and the single-bias metrics vs generation, one line per classifier."""
    fig, axes = _figure(len(CLASSIFIER_METRICS))
    gens = [g.generation for g in results.generations]
    for ax, (key, title) in zip(axes[0], CLASSIFIER_METRICS, strict=True):
        for name in classifier_names(results):
            mean, lo, hi, band = _series([getattr(g.classifiers[name].mean, key) for g in results.generations])
            (line,) = ax.plot(gens, mean, marker="o", ms=3, label=name)
            if band:
                ax.fill_between(gens, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
        _int_xaxis(ax)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{results.run_id}: overall and single-bias metrics (mean over {len(results.spec['seeds'])} "
                 "seed(s), 95% band)", fontsize="medium")
    return _save(fig, path)


def selected_generations(last: int, most: int = 6) -> list[int]:
    """All generations when there are at most ``most``; else 0, the last and evenly spaced ones between."""
    if last + 1 <= most:
        return list(range(last + 1))
    step = last / (most - 1)
    return sorted({round(i * step) for i in range(most)})


def worst_k_figure(results: Any, path: Path, generations: list[int] | None = None) -> Path:
    """Fig. 3b: mean over classes of the k-th worst subgroup accuracy, by rank k, one panel per classifier."""
    from matplotlib import colormaps

    names = classifier_names(results)
    fig, axes = _figure(len(names))
    shown = generations if generations is not None else selected_generations(results.last_generation)
    cmap = colormaps["viridis"]
    for ax, name in zip(axes[0], names, strict=True):
        for i, t in enumerate(shown):
            stats = results.generations[t].classifiers[name].mean.worst_k
            if not stats:
                continue
            mean, lo, hi, band = _series(stats)
            ranks = list(range(1, len(stats) + 1))
            color = cmap(i / max(1, len(shown) - 1) * 0.9)
            ax.plot(ranks, mean, marker="o", ms=3, color=color, label=f"gen {t}")
            if band:
                ax.fill_between(ranks, lo, hi, color=color, alpha=0.15, linewidth=0)
        ax.set_title(name)
        ax.set_xlabel("subgroup rank k (1 = worst)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        _int_xaxis(ax)
        ax.legend(fontsize="small")
    fig.suptitle(f"{results.run_id}: worst-k subgroup accuracy (eq. 5)", fontsize="medium")
    return _save(fig, path)


def generator_figure(results: Any, path: Path) -> Path:
    """Table 1 as a plot: FID per generation, with label fidelity q_t and unbalanced generation u_t."""
    fig, axes = _figure(3)
    gens = [g for g in results.generations if g.generator is not None]
    ts = [g.generation for g in gens]
    titles = {"fid": "FID (eq. 1)", "q": "label fidelity q_t", "u": "unbalanced generation u_t"}
    for ax, key in zip(axes[0], ("fid", "q", "u"), strict=True):
        mean, lo, hi, band = _series([getattr(g.generator.mean, key) for g in gens])
        if not ts or all(m != m for m in mean):  # every value NaN: undefined
            notes = {p.fid_note for g in gens for p in g.generator.per_seed if p.fid_note} if key == "fid" else set()
            why = "; ".join(sorted(notes)) if ts else "no generations yet"
            ax.text(0.5, 0.5, "\n".join(_wrap(f"{key} not computed" + (f": {why}" if why else ""), 38)),
                    ha="center", va="center", transform=ax.transAxes, fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.plot(ts, mean, marker="o", ms=3, color="C3" if key == "fid" else "C0")
            if band:
                ax.fill_between(ts, lo, hi, color="C3" if key == "fid" else "C0", alpha=0.2, linewidth=0)
            for t, m in zip(ts, mean, strict=True):
                if m == m and key == "fid":
                    ax.annotate(f"{m:.1f}", (t, m), textcoords="offset points", xytext=(0, 5), ha="center",
                                fontsize="x-small")
            ax.set_xlabel("generation")
            ax.grid(alpha=0.3)
            _int_xaxis(ax)
            if key in ("q", "u"):
                ax.set_ylim(-0.02, 1.02)
        ax.set_title(titles[key])
    fig.suptitle(f"{results.run_id}: generators per generation", fontsize="medium")
    return _save(fig, path)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def amplification_figure(results: Any, path: Path) -> Path | None:
    """B_t per classifier, and A_t = B_{t+1}/B_t with the no-amplification line at 1."""
    amp = results.amplification
    if amp is None:
        return None
    fig, axes = _figure(2, width=4.4)
    ax_b, ax_a = axes[0]
    for name, pc in amp.per_classifier.items():
        ax_b.plot(range(len(pc.bias)), [float("nan") if b is None else b for b in pc.bias], marker="o", ms=3,
                  label=name)
        label = f"{name} (A_bar = {pc.A_bar:.3f})" if pc.A_bar is not None else f"{name} (A_bar undefined)"
        ax_a.plot([a.t for a in pc.A], [float("nan") if a.value is None else a.value for a in pc.A], marker="o",
                  ms=3, label=label)
    ax_a.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax_b.set_title(f"bias B_t = {amp.measure}")
    ax_b.set_xlabel("generation t")
    ax_a.set_title("amplification A_t = B_{t+1} / B_t")
    ax_a.set_xlabel("t")
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
        _int_xaxis(ax)
        ax.legend(fontsize="small")
    fit = amp.fit
    note = (f"fit: a = {fit.a.estimate:.3g}, b = {fit.b.estimate:.3g}, R² = {fit.r2:.3g} ({fit.n_points} points)"
            if fit.status == "identified" and None not in (fit.a.estimate, fit.b.estimate, fit.r2) else f"fit: {fit.message}")
    fig.suptitle(f"{results.run_id}: bias amplification (eq. 6)\n" + "\n".join(_wrap(note, 110)),
                 fontsize="medium")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------- samples


def sample_rows(run_dir: Path, seed: int = 0, per_class: int | None = None,
                max_size: int = 64) -> list[tuple[int, Any]]:
    """``[(generation, image)]``: an H×W×3 uint8 strip per generation, columns grouped by class.

    Reads ``RUN_DIR/seed-S/gen-XXX/sample/samples.safetensors`` (``images`` uint8 N×C×H×W, ``labels``). Each
    strip holds the first ``per_class`` samples of every class (default: about 20 images in all), resized so
    the longer side is at most ``max_size`` pixels.
    """
    import numpy as np
    from safetensors.numpy import load_file

    rows = []
    for path in sorted(Path(run_dir).glob(f"seed-{seed}/gen-*/sample/samples.safetensors")):
        try:
            generation = int(path.parents[1].name.removeprefix("gen-"))
            data = load_file(str(path))
        except (ValueError, OSError) as exc:
            raise BenchError(f"{path}: cannot read generated samples ({exc})") from None
        images, labels = data["images"], data["labels"]
        classes = sorted(set(labels.tolist()))
        k = per_class or max(1, 20 // max(1, len(classes)))
        picks = [i for c in classes for i in np.flatnonzero(labels == c)[:k]]
        tiles = [_tile(images[i], max_size) for i in picks]
        if not tiles:
            continue
        h = max(t.shape[0] for t in tiles)
        pad = 2
        strip = np.full((h, sum(t.shape[1] + pad for t in tiles) - pad, 3), 255, dtype=np.uint8)
        x = 0
        for t in tiles:
            strip[: t.shape[0], x: x + t.shape[1]] = t
            x += t.shape[1] + pad
        rows.append((generation, strip))
    return rows


def _tile(image: Any, max_size: int) -> Any:
    import numpy as np

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3, 4):
        img = np.transpose(img, (1, 2, 0))
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[:, :, :3].astype(np.uint8)
    h, w = img.shape[:2]
    if max(h, w) > max_size:
        from PIL import Image

        scale = max_size / max(h, w)
        img = np.asarray(Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale)))))
    return img


def sample_grid(rows: list[tuple[int, Any]]) -> Any:
    """Stack the strips of :func:`sample_rows` into one image (white padding), generation 1 at the top."""
    import numpy as np

    pad = 4
    width = max(s.shape[1] for _, s in rows)
    height = sum(s.shape[0] + pad for _, s in rows) - pad
    grid = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for _, s in rows:
        grid[y: y + s.shape[0], : s.shape[1]] = s
        y += s.shape[0] + pad
    return grid


def samples_figure(run_dir: Path, path: Path, seed: int = 0, title: str | None = None) -> Path | None:
    """Figs. 10–12: a grid of generated samples, one row per generation (top to bottom)."""
    rows = sample_rows(run_dir, seed)
    if not rows:
        return None
    grid = sample_grid(rows)
    pad = 4
    centers, y = [], 0
    for _, s in rows:
        centers.append(y + s.shape[0] / 2)
        y += s.shape[0] + pad
    h, w = grid.shape[:2]
    fig, axes = _figure(1, width=min(14.0, max(4.0, w / 40)), height=max(1.5, h / 40 + 0.6))
    ax = axes[0][0]
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks(centers, [f"gen {t}" for t, _ in rows])
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"generated samples (seed {seed}), columns grouped by class", fontsize="medium")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------- the report


def run_results(run_dir: Path, *, data_root: Path | None = None, plugins: Any = None) -> Any:
    """The results of a run directory: ``results.json`` when it holds a complete run; otherwise (a run in
    progress, or one that stopped) collected afresh from the units finished so far, as a ``partial`` result.

    Collecting reads the dataset's description (class and subgroup names), so it needs the data where the run
    found it: ``data_root`` as given to ``bench run``.

    :raises BenchError: not a run directory, or the dataset cannot be read.
    """
    from harness.engine.plan import plan
    from harness.engine.progress import read_spec, unit_time
    from harness.engine.stages import RunContext
    from harness.errors import DataError
    from harness.plugin.manager import default_plugins
    from harness.publish.results import collect_results, load_results

    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if path.exists():
        results = load_results(path)
        if results.status == "complete":
            return results
    elif not (run_dir / "spec.json").exists():
        raise BenchError(f"{run_dir}: no results.json or spec.json (is this a run directory? `bench run` prints "
                         "the path of its results.json)")
    spec = read_spec(run_dir)
    if data_root is not None:
        spec = spec.model_copy(update={"data_root": Path(data_root)})
    ctx = RunContext(spec, run_dir, plugins or default_plugins())
    try:
        _ = ctx.data
    except DataError as exc:
        raise DataError(f"{exc} (a partial report reads the dataset's description: pass --data-root as given to "
                        "bench run)") from None
    worked = sum(t.seconds for u in plan(spec) if (t := unit_time(run_dir, u)) is not None)
    return collect_results(ctx, elapsed=worked)  # the work done so far stands for the (unknown) wall time


def write_report(run_dir: Path, out_dir: Path | None = None, *, data_root: Path | None = None,
                 plugins: Any = None) -> list[Path]:
    """Write the run's figures (PNG) into ``out_dir`` (default ``RUN_DIR/report``); return their paths.

    Draws what exists: the results of :func:`run_results` (complete, or partial while a run is in progress) and,
    for the sample grid, the stored samples of the first seed. A figure whose data does not exist yet (no
    generation finished, no amplification, no samples) is skipped.
    """
    run_dir = Path(run_dir)
    results = run_results(run_dir, data_root=data_root, plugins=plugins)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    written: list[Path] = []
    if results.generations:
        written.append(metrics_figure(results, out / "metrics.png"))
        written.append(worst_k_figure(results, out / "worst_k.png"))
    if any(g.generator is not None for g in results.generations):
        written.append(generator_figure(results, out / "generator.png"))
    amp = amplification_figure(results, out / "amplification.png")
    if amp is not None:
        written.append(amp)
    seed = results.spec["seeds"][0]
    samples = samples_figure(run_dir, out / "samples.png", seed=seed)
    if samples is not None:
        written.append(samples)
    return written
