"""Figures of a finished (or partial) run, like Zhang et al.'s, as PNG, PDF or SVG.

=====================  =======================================================================================
``metrics``            acc, meo, di, md vs generation, one line per classifier, 95% band over seeds (Fig. 3a)
``worst_k``            per classifier: worst-k subgroup accuracy by rank k at selected generations (Fig. 3b), and
                       the worst, median and best subgroup across generations (readable with many subgroups)
``generator``          FID (Table 1), label fidelity q_t and unbalanced generation u_t per generation
``amplification``      bias B_t with its band, and A_t = B_{t+1}/B_t per classifier with its intervals where the
                       results carry them; A_bar, the fit and the verdict
``representation``     who is in the training set D_t: each subgroup's share, and the minority's share of its class
                       (Wyllie et al.; real part known, synthetic part measured or estimated)
``curves``             training curves of the first seed: the generator's losses per N steps and each classifier's
                       training loss and held-out accuracy per epoch, one line per generation
``samples``            generated samples, one row per generation under a row of real training images, columns
                       grouped and labelled by class (Figs. 10–12)
=====================  =======================================================================================

Every panel has axis labels with the unit or range; intervals are drawn inside the range the quantity can take
(:data:`METRIC_BOUNDS`). Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (no ``pyplot``,
no global backend switch), so calling :func:`write_report` from a notebook or a GUI program changes nothing there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
        if v is None or math.isnan(v):
            return v
        if lower is not None and v < lower:
            return lower
        if upper is not None and v > upper:
            return upper
        return v

    return clip(low), clip(high)


def bias_stats(results: Any, classifier: str) -> list[tuple[float | None, float | None, float | None]]:
    """``(B_t, low, high)`` per finished generation for one classifier: ``B_t`` as the amplification block holds
    it, with its stored interval (``bias_interval``); in results without one, the 95% interval of the metric it
    is made of (``1-meo``: ``1 − meo``; ``md``; ``gap``: ``bias_gap``) turned into one of ``B_t``. Inside
    ``[0, 1]``; ``(None, None, None)`` where undefined."""
    from harness.publish.leaderboard import bias_intervals

    amp = results.amplification
    measure = amp.measure if amp is not None else results.spec.get("metrics", {}).get("bias", "1-meo")
    pc = amp.per_classifier.get(classifier) if amp is not None else None
    stored = bias_intervals(pc) if pc is not None else None
    out = []
    for g in results.generations:
        stat = getattr(g.classifiers[classifier].mean, {"1-meo": "meo", "md": "md", "gap": "bias_gap"}[measure])
        mean = pc.bias[g.generation] if pc is not None and g.generation < len(pc.bias) else None
        if mean is None and stat.mean is not None:
            mean = 1.0 - stat.mean if measure == "1-meo" else stat.mean
        if stored is not None:
            low, high = stored[g.generation] or (None, None)
        else:
            low, high = stat.ci_low, stat.ci_high
            if measure == "1-meo" and low is not None and high is not None:
                low, high = 1.0 - high, 1.0 - low
        low, high = clip_interval("B", low, high)
        out.append((mean, low, high))
    return out


#: The y-axis label of each quantity, with its unit or range.
YLABELS: dict[str, str] = {
    "acc": "accuracy (fraction, 0–1)",
    "meo": "MEO (0–1; 1 = equal TPRs)",
    "di": "DI (≤ 1; 1 = parity)",
    "md": "MD (largest TPR gap, 0–1)",
    "worst": "subgroup accuracy (fraction, 0–1)",
    "fid": "FID (feature distance, ≥ 0)",
    "q": "q_t (fraction of labels kept, 0–1)",
    "u": "u_t (TV distance, 0–1)",
    "A": "A_t (ratio; 1 = no change)",
}

#: What ``--format`` accepts: matplotlib writes each with its own backend.
FORMATS = ("png", "pdf", "svg")

#: Dates left out of PDF and SVG files, so that the same run gives the same bytes.
_METADATA: dict[str, dict[str, None] | None] = {"png": None, "pdf": {"CreationDate": None}, "svg": {"Date": None}}

#: Classes shown in a sample grid, at most (one column group each, labelled).
MAX_GRID_CLASSES = 20


def _figure(ncols: int, nrows: int = 1, *, width: float = 3.6, height: float = 3.0) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, width * ncols), height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, out: Path, stem: str, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write ``fig`` as ``out/<stem>.<format>`` for each format (PNG at 110 dpi; PDF with TrueType fonts, as
    journals ask; SVG with text as paths); return the paths."""
    import matplotlib

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise BenchError(f"unknown figure format {unknown[0]!r}; choose from: {', '.join(FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in dict.fromkeys(formats):
        path = out / f"{stem}.{fmt}"
        with matplotlib.rc_context({"pdf.fonttype": 42, "svg.hashsalt": "bench"}):
            fig.savefig(path, format=fmt, dpi=110, metadata=_METADATA[fmt])
        paths.append(path)
    return paths


def _series(stats: list[Any], key: str | None = None) -> tuple[list[float], list[float], list[float], bool]:
    """Means and interval bounds (NaN where undefined) from a list of ``Stat`` (or None); the bounds clipped to
    :data:`METRIC_BOUNDS` of ``key``."""
    nan = float("nan")
    mean = [nan if s is None or s.mean is None else s.mean for s in stats]
    lo, hi = [], []
    for s in stats:
        low, high = (None, None) if s is None else clip_interval(key or "", s.ci_low, s.ci_high)
        lo.append(nan if low is None else low)
        hi.append(nan if high is None else high)
    return mean, lo, hi, any(s is not None and s.ci_low is not None for s in stats)


def _bound_axis(ax: Any, key: str) -> None:
    """Keep the y-axis within the range ``key`` can take (plus a 3% margin, so points on a bound show whole)."""
    lower, upper = METRIC_BOUNDS.get(key, (None, None))
    lo, hi = ax.get_ylim()
    pad = 0.03 * (hi - lo)
    if lower is not None and lo < lower - pad:
        lo = lower - pad
    if upper is not None and hi > upper + pad:
        hi = upper + pad
    ax.set_ylim(lo, hi)


def classifier_names(results: Any) -> list[str]:
    return [c["name"] if isinstance(c, dict) else c for c in results.spec["classifiers"]]


def _int_xaxis(ax: Any, xs: Sequence[int] = ()) -> None:
    """Whole-number ticks: each of ``xs`` when there are at most 12 (a single one too), else about 10."""
    from matplotlib.ticker import MaxNLocator

    ticks = sorted(set(xs))
    if 0 < len(ticks) <= 12:
        ax.set_xticks(ticks)
        if len(ticks) == 1:
            ax.set_xlim(ticks[0] - 0.5, ticks[0] + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _seeds_note(results: Any) -> str:
    n = len(results.spec["seeds"])
    return f"mean over {n} seeds, 95% band" if n >= 2 else "1 seed: no interval"


def metrics_figure(results: Any) -> Any:
    """Fig. 3a: overall accuracy and the single-bias metrics vs generation, one line per classifier."""
    fig, axes = _figure(len(CLASSIFIER_METRICS))
    gens = [g.generation for g in results.generations]
    for ax, (key, title) in zip(axes[0], CLASSIFIER_METRICS, strict=True):
        for name in classifier_names(results):
            mean, lo, hi, band = _series([getattr(g.classifiers[name].mean, key) for g in results.generations], key)
            (line,) = ax.plot(gens, mean, marker="o", ms=3, label=name)
            if band:
                ax.fill_between(gens, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("generation t")
        ax.set_ylabel(YLABELS[key])
        ax.grid(alpha=0.3)
        _int_xaxis(ax, gens)
        _bound_axis(ax, key)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{results.run_id}: overall and single-bias metrics ({_seeds_note(results)})", fontsize="medium")
    return fig


def selected_generations(last: int, most: int = 6) -> list[int]:
    """All generations when there are at most ``most``; else 0, the last and evenly spaced ones between."""
    if last + 1 <= most:
        return list(range(last + 1))
    step = last / (most - 1)
    return sorted({round(i * step) for i in range(most)})


#: Above this many subgroups the by-rank panel drops its markers and shows at most four generations.
MANY_SUBGROUPS = 8


def worst_k_figure(results: Any, generations: list[int] | None = None) -> Any:
    """Fig. 3b, readable with many subgroups: one row per classifier, two panels. Left: the mean over classes
    of the k-th worst subgroup accuracy by rank k at selected generations. Right: the worst, median and best
    subgroup accuracy across every generation."""
    from matplotlib import colormaps

    names = classifier_names(results)
    fig, axes = _figure(2, len(names), width=4.6, height=3.3)
    cmap = colormaps["viridis"]
    for (ax_rank, ax_gen), name in zip(axes, names, strict=True):
        G = max((len(g.classifiers[name].mean.worst_k) for g in results.generations), default=0)
        many = G > MANY_SUBGROUPS
        shown = generations if generations is not None else selected_generations(results.last_generation,
                                                                                 4 if many else 6)
        for i, t in enumerate(shown):
            stats = results.generations[t].classifiers[name].mean.worst_k
            if not stats:
                continue
            mean, lo, hi, band = _series(stats, "worst")
            ranks = list(range(1, len(stats) + 1))
            color = cmap(i / max(1, len(shown) - 1) * 0.9)
            ax_rank.plot(ranks, mean, marker=None if many else "o", ms=3, color=color, label=f"gen {t}")
            if band:
                ax_rank.fill_between(ranks, lo, hi, color=color, alpha=0.15, linewidth=0)
        ax_rank.set_title(f"{name}: k-th worst subgroup (eq. 5)", fontsize="medium")
        ax_rank.set_xlabel("subgroup rank k (1 = worst)")
        ax_rank.set_ylabel(YLABELS["worst"])
        ax_rank.grid(alpha=0.3)
        _int_xaxis(ax_rank, range(1, G + 1))
        _bound_axis(ax_rank, "worst")
        if shown and G:
            ax_rank.legend(fontsize="small", title=f"{G} subgroups" + (f", {len(shown)} generations" if many else ""),
                           title_fontsize="small")

        gens = [g.generation for g in results.generations]
        picks = {0: "worst (k = 1)"}
        if G > 2:
            picks.setdefault((G - 1) // 2, f"median (k = {(G - 1) // 2 + 1})")
        if G > 1:
            picks.setdefault(G - 1, f"best (k = {G})")
        for (k, label), color in zip(picks.items(), ("C3", "C7", "C2"), strict=False):
            stats = [ws[k] if len(ws := g.classifiers[name].mean.worst_k) > k else None for g in results.generations]
            mean, lo, hi, band = _series(stats, "worst")
            ax_gen.plot(gens, mean, marker="o", ms=3, color=color, label=label)
            if band:
                ax_gen.fill_between(gens, lo, hi, color=color, alpha=0.15, linewidth=0)
        ax_gen.set_title(f"{name}: worst, median and best of {G} subgroups", fontsize="medium")
        ax_gen.set_xlabel("generation t")
        ax_gen.set_ylabel(YLABELS["worst"])
        ax_gen.grid(alpha=0.3)
        _int_xaxis(ax_gen, gens)
        _bound_axis(ax_gen, "worst")
        if G:
            ax_gen.legend(fontsize="small")
    fig.suptitle(f"{results.run_id}: worst-k subgroup accuracy, mean over classes ({_seeds_note(results)})",
                 fontsize="medium")
    return fig


def generator_figure(results: Any) -> Any:
    """Table 1 as a plot: FID per generation, with label fidelity q_t and unbalanced generation u_t."""
    fig, axes = _figure(3)
    gens = [g for g in results.generations if g.generator is not None]
    ts = [g.generation for g in gens]
    titles = {"fid": "FID (eq. 1)", "q": "label fidelity q_t", "u": "unbalanced generation u_t"}
    for ax, key in zip(axes[0], ("fid", "q", "u"), strict=True):
        mean, lo, hi, band = _series([getattr(g.generator.mean, key) for g in gens], key)
        if not ts or all(math.isnan(m) for m in mean):  # every value NaN: undefined
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
                if not math.isnan(m) and key == "fid":
                    ax.annotate(f"{m:.1f}", (t, m), textcoords="offset points", xytext=(0, 5), ha="center",
                                fontsize="x-small")
            ax.grid(alpha=0.3)
            _int_xaxis(ax, ts)
            if key in ("q", "u"):
                ax.set_ylim(-0.02, 1.02)
            _bound_axis(ax, key)
        ax.set_xlabel("generation t")
        ax.set_ylabel(YLABELS[key])
        ax.set_title(titles[key])
    fig.suptitle(f"{results.run_id}: generators per generation ({_seeds_note(results)})", fontsize="medium")
    return fig


def representation_figure(results: Any) -> Any | None:
    """Who is in D_t across generations (Wyllie et al.'s representation): each subgroup's share of the training
    set, and the mean over classes of the share of each class that is its D_real-minority subgroup. None when no
    generation records it (a dataset without subgroups, results of an older bench)."""
    gens = [g for g in results.generations if g.representation is not None]
    if not gens:
        return None
    ts = [g.generation for g in gens]
    fig, axes = _figure(2, width=4.6)
    names = results.dataset.subgroup_names
    for k, stats in enumerate(zip(*(g.representation.subgroup for g in gens), strict=True)):
        mean, lo, hi, band = _series(list(stats), "u")
        label = names[k] if results.dataset.subgroup_scope == "global" and k < len(names) else f"subgroup {k}"
        (line,) = axes[0][0].plot(ts, mean, marker="o", ms=3, label=str(label))
        if band:
            axes[0][0].fill_between(ts, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    axes[0][0].legend(fontsize="small", title="subgroup")
    axes[0][0].set_title("each subgroup's share of D_t")
    mean, lo, hi, band = _series([g.representation.minority_share for g in gens], "u")
    axes[0][1].plot(ts, mean, marker="o", ms=3, color="C3")
    if band:
        axes[0][1].fill_between(ts, lo, hi, color="C3", alpha=0.2, linewidth=0)
    if gens[0].generation == 0 and not math.isnan(mean[0]):
        axes[0][1].axhline(mean[0], color="0.5", linestyle="--", linewidth=1, label="D_real")
        axes[0][1].legend(fontsize="small")
    axes[0][1].set_title("minority share of its class, mean over classes")
    for ax in axes[0]:
        ax.set_xlabel("generation t")
        ax.set_ylabel("share of images (0–1)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        _int_xaxis(ax, ts)
    fig.suptitle(f"{results.run_id}: representation in the training set D_t ({_seeds_note(results)})",
                 fontsize="medium")
    return fig


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _verdict_line(results: Any) -> str | None:
    """The pooled verdict (else each classifier's) in one line, when the results carry one."""
    from harness.publish.leaderboard import verdict_of

    def one(v: dict[str, Any]) -> str:
        interval = (f" [{v['ci_low']:+.3g}, {v['ci_high']:+.3g}]"
                    if v.get("ci_low") is not None and v.get("ci_high") is not None else "")
        effect = f", E = {v['effect']:+.3g}{interval}" if v.get("effect") is not None else ""
        return f"{v['label']}{effect}"

    pooled = verdict_of(results, None)
    if pooled is not None:
        return f"verdict (pooled): {one(pooled)}"
    per = [(m, v) for m in classifier_names(results) if (v := verdict_of(results, m)) is not None]
    return "verdict: " + "; ".join(f"{m}: {one(v)}" for m, v in per) if per else None


def amplification_figure(results: Any) -> Any | None:
    """B_t per classifier with its 95% band, and A_t = B_{t+1}/B_t (with intervals where the results carry
    them) with the no-amplification line at 1; A_bar, the fit and the verdict in the legend and the title."""
    from harness.publish.leaderboard import a_bar_interval, a_t_intervals

    amp = results.amplification
    if amp is None:
        return None
    fig, axes = _figure(2, width=4.6)
    ax_b, ax_a = axes[0]
    gens = [g.generation for g in results.generations]
    for i, (name, pc) in enumerate(amp.per_classifier.items()):
        color = f"C{i % 10}"
        stats = bias_stats(results, name)
        nan = float("nan")
        ax_b.plot(gens, [nan if b is None else b for b, _, _ in stats], marker="o", ms=3, color=color, label=name)
        if any(lo is not None for _, lo, _ in stats):
            ax_b.fill_between(gens, [nan if lo is None else lo for _, lo, _ in stats],
                              [nan if hi is None else hi for _, _, hi in stats], color=color, alpha=0.2, linewidth=0)
        bar_iv = a_bar_interval(pc)
        if pc.A_bar is None:
            label = f"{name} (A_bar undefined)"
        elif bar_iv is not None:
            low, high = clip_interval("A_bar", *bar_iv)
            label = f"{name} (A_bar = {pc.A_bar:.3f} [{low:.3f}, {high:.3f}])"
        else:
            label = f"{name} (A_bar = {pc.A_bar:.3f}, no interval)"
        ts = [a.t for a in pc.A]
        values = [nan if a.value is None else a.value for a in pc.A]
        ax_a.plot(ts, values, marker="o", ms=3, color=color, label=label)
        ivs = a_t_intervals(pc)
        if any(iv is not None for iv in ivs):
            bounds = [clip_interval("A", *iv) if iv is not None else (nan, nan) for iv in ivs]
            lower = [0.0 if math.isnan(v) or math.isnan(lo) else max(0.0, v - lo)
                     for v, (lo, _) in zip(values, bounds, strict=True)]
            upper = [0.0 if math.isnan(v) or math.isnan(hi) else max(0.0, hi - v)
                     for v, (_, hi) in zip(values, bounds, strict=True)]
            ax_a.errorbar(ts, values, yerr=[lower, upper], fmt="none", ecolor=color, elinewidth=1.2, capsize=3,
                          alpha=0.7)
    ax_a.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax_b.set_title(f"bias B_t = {amp.measure}")
    ax_b.set_xlabel("generation t")
    ax_b.set_ylabel(f"B_t = {amp.measure} (0–1)")
    ax_a.set_title("amplification A_t = B_{t+1} / B_t")
    ax_a.set_xlabel("t (A_t compares generations t and t + 1)")
    ax_a.set_ylabel(YLABELS["A"])
    all_t = [a.t for pc in amp.per_classifier.values() for a in pc.A]
    for ax, key, xs in ((ax_a, "A", all_t), (ax_b, "B", gens)):
        ax.grid(alpha=0.3)
        _int_xaxis(ax, xs)
        _bound_axis(ax, key)
        ax.legend(fontsize="small")
    fit = amp.fit
    notes = [f"fit: a = {fit.a.estimate:.3g}, b = {fit.b.estimate:.3g}, R² = {fit.r2:.3g} ({fit.n_points} points)"
             if fit.status == "identified" and None not in (fit.a.estimate, fit.b.estimate, fit.r2)
             else f"fit: {fit.message}"]
    verdict = _verdict_line(results)
    notes.append(verdict if verdict is not None else "verdict: none (no control arm)")
    fig.suptitle(f"{results.run_id}: bias amplification (eq. 6), {_seeds_note(results)}\n"
                 + "\n".join(line for note in notes for line in _wrap(note, 110)), fontsize="medium")
    return fig


# --------------------------------------------------------------------------------------------------- curves


def curves_figure(run_dir: Path, results: Any, seed: int = 0) -> Any | None:
    """The training curves of one seed (kept in the units' ``result.json``, :class:`~harness.engine.records.History`):
    a row for the generator (each loss per N optimizer steps) and one per classifier (training loss and held-out
    accuracy per epoch; replicate 0 of the treated arm), one line per generation (at most six, spread). ``None``
    when no unit of the seed kept curves (a run from before they were kept, or nothing trained yet)."""
    from harness.engine.plan import unit
    from harness.engine.records import ClassifierResult, GeneratorResult, read_record
    from harness.engine.rundir import DamagedUnitError

    def curves(stage: str, t: int, name: str | None = None) -> Any:
        model = GeneratorResult if stage == "generator" else ClassifierResult
        try:
            record = read_record(unit(stage, seed, t, name), Path(run_dir), model)
        except DamagedUnitError:
            return None  # bench status and bench run --verify report it
        return record.curves() if record is not None else None

    last = int(results.spec["loop"]["generations"])
    gens = selected_generations(last)
    rows: list[tuple[str, dict[int, Any]]] = [("generator", {t: h for t in gens if t and (h := curves("generator", t))})]
    rows += [(m, {t: h for t in gens if (h := curves("classifier", t, m))}) for m in classifier_names(results)]
    rows = [(name, found) for name, found in rows if found]
    if not rows:
        return None
    generator_series = list(dict.fromkeys(k for name, found in rows[:1] if name == "generator"
                                          for h in found.values() for k in h.series))
    ncols = max(2, len(generator_series))
    fig, axes = _figure(ncols, len(rows), width=3.4, height=2.8)
    colors = {t: f"C{i % 10}" for i, t in enumerate(gens)}
    for row, (name, found) in zip(axes, rows, strict=True):
        if name == "generator":
            every = {h.every for h in found.values()}
            n = every.pop() if len(every) == 1 else None
            per = "per step" if n == 1 else f"mean over {n or 'N'} steps"
            panels = [(k, k, f"{k} ({per})") for k in generator_series]
            title = f"generator {results.spec['generator']['name']}"
        else:
            panels = [("train_loss", "training loss", "training loss (cross-entropy)"),
                      ("val_acc", "held-out accuracy", YLABELS["acc"])]
            title = f"classifier {name}"
        for ax, (key, what, ylabel) in zip(row, panels):
            for t, h in found.items():
                if key in h.series:
                    ys = [math.nan if v is None else v for v in h.series[key]]
                    ax.plot(h.at, ys, marker="o" if len(h.at) <= 20 else None, ms=3, color=colors[t], label=f"gen {t}")
            ax.set_title(f"{title}: {what}", fontsize="small")
            ax.set_xlabel("epoch" if name != "generator" else "optimizer step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if key == "val_acc":
                _bound_axis(ax, "acc")
            if name != "generator":
                _int_xaxis(ax, sorted({a for h in found.values() for a in h.at}))
        for ax in row[len(panels):]:
            ax.set_visible(False)
        row[0].legend(fontsize="x-small")
    fig.suptitle(f"{results.run_id}: training curves, seed {seed} (one line per generation)", fontsize="medium")
    return fig


# --------------------------------------------------------------------------------------------------- samples


def _stored_samples(run_dir: Path, seed: int) -> list[tuple[int, Any, Any]]:
    """``[(generation, images N×C×H×W uint8, labels N)]`` from ``RUN_DIR/seed-S/gen-XXX/sample/``."""
    from safetensors.numpy import load_file

    out = []
    for path in sorted(Path(run_dir).glob(f"seed-{seed}/gen-*/sample/samples.safetensors")):
        try:
            generation = int(path.parents[1].name.removeprefix("gen-"))
            data = load_file(str(path))
        except (ValueError, OSError) as exc:
            raise BenchError(f"{path}: cannot read generated samples ({exc})") from None
        out.append((generation, data["images"], data["labels"]))
    return out


def sample_rows(run_dir: Path, seed: int = 0, per_class: int | None = None,
                max_size: int = 64) -> list[tuple[int, Any]]:
    """``[(generation, image)]``: an H×W×3 uint8 strip per generation, columns grouped by class.

    Reads ``RUN_DIR/seed-S/gen-XXX/sample/samples.safetensors`` (``images`` uint8 N×C×H×W, ``labels``). Each
    strip holds the first ``per_class`` samples of every class (default: about 20 images in all), resized so
    the longer side is at most ``max_size`` pixels.
    """
    import numpy as np

    rows = []
    for generation, images, labels in _stored_samples(run_dir, seed):
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


def real_examples(run_dir: Path, classes: Sequence[int], per_class: int, *, data_root: Path | None = None,
                  plugins: Any = None) -> tuple[Any, Any] | str:
    """The first ``per_class`` real training images of each class in ``classes`` — ``(images N×C×H×W uint8,
    labels N)`` — from the run's dataset, or a sentence saying why they cannot be read (the dataset is not where
    the run's spec and ``data_root`` say)."""
    import numpy as np

    from harness.engine.progress import read_spec
    from harness.engine.stages import RunContext
    from harness.plugin.manager import default_plugins

    try:
        spec = read_spec(run_dir)
        if data_root is not None:
            spec = spec.model_copy(update={"data_root": Path(data_root)})
        train = RunContext(spec, Path(run_dir), plugins or default_plugins()).data.train
    except BenchError as exc:
        return f"real images not shown: {exc}"
    labels = train.labels.numpy()
    picks = [int(i) for c in classes for i in np.flatnonzero(labels == c)[:per_class]]
    if not picks:
        return "real images not shown: the dataset has none of these classes"
    import torch

    return train.images[torch.tensor(picks)].numpy(), labels[picks]


def _class_row(images: Any, labels: Any, classes: Sequence[int], k: int, tile: tuple[int, int],
               max_size: int, gap: int, pad: int) -> Any:
    """One row of the grid: ``k`` slots per class, in ``classes`` order (white where a class has fewer)."""
    import numpy as np

    h, w = tile
    width = len(classes) * (k * (w + pad) - pad) + (len(classes) - 1) * gap
    row = np.full((h, width, 3), 255, dtype=np.uint8)
    x = 0
    for c in classes:
        for slot, i in enumerate(np.flatnonzero(np.asarray(labels) == c)[:k]):
            t = _tile(images[i], max_size)[:h, :w]
            left = x + slot * (w + pad)
            row[: t.shape[0], left: left + t.shape[1]] = t
        x += k * (w + pad) - pad + gap
    return row


def samples_figure(run_dir: Path, results: Any, seed: int = 0, *,
                   real: Callable[[list[int], int], tuple[Any, Any] | str] | None = None,
                   max_size: int = 64) -> Any | None:
    """Figs. 10–12: generated samples, one row per generation under a row of real training images, in columns
    grouped and labelled by class (at most :data:`MAX_GRID_CLASSES` classes, about 20 images a row).

    ``real(classes, per_class)`` gives the real images and labels (:func:`real_examples`), or a sentence saying
    why there are none, which the figure shows instead. ``None`` when the run has no stored samples.
    """
    import numpy as np

    stored = _stored_samples(run_dir, seed)
    if not stored:
        return None
    present = sorted({int(c) for _, _, labels in stored for c in np.asarray(labels).tolist()})
    classes = present[:MAX_GRID_CLASSES]
    k = max(1, 20 // len(classes))
    reference = real(classes, k) if real is not None else None
    first = _tile(stored[0][1][0], max_size)
    tile = first.shape[:2]
    gap, pad, row_gap = 8, 2, 4
    rows: list[tuple[str, Any]] = []
    if reference is not None and not isinstance(reference, str):
        rows.append(("real", _class_row(*reference, classes, k, tile, max_size, gap, pad)))
    rows += [(f"gen {t}", _class_row(images, labels, classes, k, tile, max_size, gap, pad))
             for t, images, labels in stored]
    height = sum(r.shape[0] + row_gap for _, r in rows) - row_gap
    grid = np.full((height + (row_gap * 2 if rows[0][0] == "real" else 0), rows[0][1].shape[1], 3), 255,
                   dtype=np.uint8)
    centers, y = [], 0
    for i, (_, r) in enumerate(rows):
        grid[y: y + r.shape[0]] = r
        centers.append(y + r.shape[0] / 2)
        y += r.shape[0] + row_gap + (row_gap * 2 if i == 0 and rows[0][0] == "real" else 0)
    h, w = grid.shape[:2]
    names = list(results.dataset.class_names) if results is not None else []
    fig_w = min(14.0, max(5.0, w / 40))  # 40 px an inch, at most 14 inches wide: taller images shrink alike
    fig, axes = _figure(1, width=fig_w, height=max(2.0, h / w * fig_w + 1.1))
    ax = axes[0][0]
    ax.imshow(grid, interpolation="nearest")
    if rows[0][0] == "real":
        ax.axhline(rows[0][1].shape[0] + row_gap * 1.5, color="0.3", linewidth=1)
    ax.set_yticks(centers, [label for label, _ in rows])
    group = k * (tile[1] + pad) - pad
    labels = [(names[c] if c < len(names) else str(c))[:16] for c in classes]
    slanted = len(classes) > 8 and max(len(x) for x in labels) > 8  # long names side by side would overlap
    ax.set_xticks([i * (group + gap) + group / 2 for i in range(len(classes))], labels,
                  rotation=35 if slanted else 0, ha="left" if slanted else "center",
                  rotation_mode="anchor", fontsize="small")
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_xlabel(f"class ({k} image{'s' if k != 1 else ''} each"
                  + (f"; first {len(classes)} of {len(present)} classes" if len(present) > len(classes) else "")
                  + ")")
    ax.set_ylabel("images from")
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    run_id = results.run_id if results is not None else Path(run_dir).name
    if rows[0][0] == "real":
        note = "; top row: real training images"
    else:
        note = "\n" + "\n".join(_wrap(reference, 120)) if isinstance(reference, str) else ""
    ax.set_title(f"{run_id}: generated samples (seed {seed}) by class{note}", fontsize="medium")
    return fig


# --------------------------------------------------------------------------------------------------- the report


def run_results(run_dir: Path, *, data_root: Path | None = None, plugins: Any = None) -> Any:
    """The results of a run directory: ``results.json`` when it holds a complete run (or when the folder holds
    only a results file); otherwise (a run in progress, or one that stopped) collected afresh from the units
    finished so far, as a ``partial`` result.

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
        if results.status == "complete" or not (run_dir / "spec.json").exists():
            return results  # complete, or a partial results file without its run: nothing more to collect
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
                 plugins: Any = None, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write the run's figures into ``out_dir`` (default ``RUN_DIR/report``), each in every one of ``formats``
    (:data:`FORMATS`: png, pdf, svg); return their paths, figure by figure.

    Draws what exists: the results of :func:`run_results` (complete, or partial while a run is in progress) and,
    for the sample grid, the stored samples of the first seed under a row of real training images (read from
    the dataset; left out, with the reason on the figure, where it cannot be read). A figure whose data does
    not exist yet (no generation finished, no amplification, no samples) is skipped.

    :raises BenchError: an unknown format, not a run directory, or a partial run whose dataset cannot be read.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise BenchError(f"unknown figure format {unknown[0] if unknown else ''!r}; choose from: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    results = run_results(run_dir, data_root=data_root, plugins=plugins)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    import matplotlib

    # Names come from results files and plugins: text, never mathtext (a name with two "$" would be typeset).
    with matplotlib.rc_context({"text.parse_math": False}):
        return _write_figures(run_dir, results, out, formats, data_root=data_root, plugins=plugins)


def _write_figures(run_dir: Path, results: Any, out: Path, formats: Sequence[str], *, data_root: Path | None,
                   plugins: Any) -> list[Path]:
    figures: list[tuple[str, Any]] = []
    if results.generations:
        figures += [("metrics", metrics_figure(results)), ("worst_k", worst_k_figure(results))]
    if any(g.generator is not None for g in results.generations):
        figures.append(("generator", generator_figure(results)))
    figures.append(("amplification", amplification_figure(results)))
    figures.append(("curves", curves_figure(run_dir, results, results.spec["seeds"][0])))
    figures.append(("representation", representation_figure(results)))
    def real(classes: list[int], per_class: int) -> tuple[Any, Any] | str:
        return real_examples(run_dir, classes, per_class, data_root=data_root, plugins=plugins)

    figures.append(("samples", samples_figure(run_dir, results, results.spec["seeds"][0], real=real)))
    written: list[Path] = []
    for stem, fig in figures:
        if fig is not None:
            written += save_figure(fig, out, stem, formats)
    return written
