"""The leaderboard as a static site that works offline (``bench leaderboard render``).

``index.html`` groups the entries into tracks (:func:`~harness.publish.leaderboard.group_tracks`: the entries
``bench leaderboard compare`` calls fair comparisons of one another) and ranks them only within a track: per
track a table of (entry, classifier) rows with each metric's mean and 95% interval and the verdict, sortable by
clicking a column header and filtered by a text box (vanilla JS, inlined), a chart of the bias ``B_t`` across
generations for every row, and the command that reproduces each entry. Each entry gets ``entries/<run_id>.html``
with its charts drawn as inline SVG here in Python — metrics vs generation, worst-k subgroup accuracy by rank,
B_t and A_t, FID, q_t and u_t — the verdict, the numbers per generation, the spec and provenance, a copy of the
results file, its spec as ``entries/<run_id>.spec.json`` (what ``bench run --config`` takes), and the generated
samples per generation when the run directory can be found. Nothing refers to a network resource.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from harness.publish.leaderboard import (
    COLUMNS,
    Entry,
    Track,
    a_bar_interval,
    a_t_intervals,
    classifier_names,
    ranked_tracks,
    verdict_of,
)
from harness.publish.report import METRIC_BOUNDS, bias_stats, clip_interval

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _asset(name: str) -> str:
    return resources.files("harness.publish").joinpath("site_assets", name).read_text(encoding="utf-8")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


# --------------------------------------------------------------------------------------------------- SVG charts


@dataclass
class Series:
    """One line: ``y`` (None = undefined, the line breaks there) and optional interval bounds."""

    label: str
    x: list[float]
    y: list[float | None]
    lo: list[float | None] = field(default_factory=list)
    hi: list[float | None] = field(default_factory=list)


def _decimals(step: float) -> int:
    for d in range(0, 10):
        if abs(round(step, d) - step) <= 1e-9 * max(1.0, abs(step)):
            return d
    return 10


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]`` (the first ≤ lo, the last ≥ hi)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo <= 1e-9 * max(1.0, abs(lo), abs(hi)):  # one value (up to rounding): a band around it
        pad = abs(lo) * 0.1 or 0.05
        lo, hi = lo - pad, max(lo, hi) + pad
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = start
    while v < hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _clip(v: float | None, bounds: tuple[float | None, float | None]) -> float | None:
    lower, upper = bounds
    if v is not None and lower is not None:
        v = max(lower, v)
    if v is not None and upper is not None:
        v = min(upper, v)
    return v


def _dash(i: int) -> str:
    """A dash pattern for the ``i``-th series once the palette's colours repeat."""
    pattern = ("", "6 3", "2 2", "8 3 2 3")[(i // len(PALETTE)) % 4]
    return f' stroke-dasharray="{pattern}"' if pattern else ""


def line_chart(series: Sequence[Series], *, title: str, xlabel: str = "generation", ylabel: str = "",
               ylim: tuple[float, float] | None = None, hline: float | None = None, digits: int = 3,
               width: int = 340, height: int = 230, bounds: tuple[float | None, float | None] | None = None,
               legend_columns: int = 2) -> str:
    """An inline SVG line chart: axes, round ticks, a legend, a tooltip per point, interval whiskers.

    ``bounds``: the values the quantity can take; whiskers are clipped to them. The chart scales down to the
    width of its container.
    """
    ml, mr, mt, mb = 52, 14, 26, 38
    legend_columns = max(1, legend_columns)
    legend_rows = (math.ceil(len(series) / legend_columns) if len(series) > 1
                   else (1 if series and series[0].label else 0))
    total_h = height + 16 * legend_rows + (6 if legend_rows else 0)
    pw, ph = width - ml - mr, height - mt - mb
    if bounds is not None:
        series = [Series(s.label, s.x, s.y, [_clip(v, bounds) for v in s.lo], [_clip(v, bounds) for v in s.hi])
                  for s in series]
    xs = [x for s in series for x, y in zip(s.x, s.y, strict=True) if y is not None]
    ys = [v for s in series for v in (*s.y, *s.lo, *s.hi) if v is not None and math.isfinite(v)]
    if hline is not None:
        ys.append(hline)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {total_h}" width="{width}" '
           f'height="{total_h}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>',
           f'<text class="title" x="{width / 2:.1f}" y="15" text-anchor="middle">{_e(title)}</text>']
    if not xs:
        out.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" class="muted">'
                   "no data</text></svg>")
        return "".join(out)
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    yt = nice_ticks(*(ylim if ylim is not None else (min(ys), max(ys))))
    y0, y1 = yt[0], yt[-1]

    def px(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    dec = _decimals(yt[1] - yt[0]) if len(yt) > 1 else 2
    for v in yt:
        out.append(f'<line class="grid" x1="{ml}" x2="{ml + pw}" y1="{py(v):.1f}" y2="{py(v):.1f}"/>'
                   f'<text x="{ml - 5}" y="{py(v) + 3.5:.1f}" text-anchor="end">{v:.{dec}f}</text>')
    xt = list(range(math.ceil(x0), math.floor(x1) + 1))
    every = max(1, math.ceil(len(xt) / 10))
    for v in xt[::every]:
        out.append(f'<line class="axis" x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}"/>'
                   f'<text x="{px(v):.1f}" y="{mt + ph + 15}" text-anchor="middle">{v}</text>')
    out.append(f'<line class="axis" x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}"/>'
               f'<line class="axis" x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}"/>'
               f'<text x="{ml + pw / 2:.1f}" y="{mt + ph + 31}" text-anchor="middle">{_e(xlabel)}</text>')
    if ylabel:
        out.append(f'<text transform="translate(12 {mt + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                   f"{_e(ylabel)}</text>")
    if hline is not None and y0 <= hline <= y1:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{py(hline):.1f}" y2="{py(hline):.1f}" stroke="#888" '
                   'stroke-dasharray="4 3"/>')
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        g = [f'<g class="series" data-label="{_e(s.label)}"><title>{_e(s.label)}</title>']
        for j, (x, lo, hi) in enumerate(zip(s.x, s.lo or [None] * len(s.x), s.hi or [None] * len(s.x), strict=True)):
            if lo is not None and hi is not None and s.y[j] is not None:
                g.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(lo):.1f}" y2="{py(hi):.1f}" '
                         f'stroke="{color}" stroke-opacity="0.45" stroke-width="3"/>')
        segment: list[str] = []
        for x, y in [*zip(s.x, s.y, strict=True), (None, None)]:
            if y is None:
                if len(segment) > 1:
                    g.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8"{_dash(i)} '
                             f'points="{" ".join(segment)}"/>')
                segment = []
            else:
                segment.append(f"{px(x):.1f},{py(y):.1f}")
        for x, y in zip(s.x, s.y, strict=True):
            if y is not None:
                tip = f"{s.label + ': ' if s.label else ''}{xlabel} {x:g}: {y:.{digits}f}"
                g.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{color}">'
                         f"<title>{_e(tip)}</title></circle>")
        g.append("</g>")
        out += g
    if legend_rows:
        for i, s in enumerate(series):
            lx = ml + (i % legend_columns) * (pw / legend_columns)
            ly = height + 8 + 16 * (i // legend_columns)
            color = PALETTE[i % len(PALETTE)]
            out.append(f'<line x1="{lx:.1f}" x2="{lx + 12:.1f}" y1="{ly - 3}" y2="{ly - 3}" stroke="{color}" '
                       f'stroke-width="3"{_dash(i)}/><text x="{lx + 16:.1f}" y="{ly + 1}">{_e(s.label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _stat_series(label: str, xs: list[int], stats: list[Any]) -> Series:
    return Series(label, list(xs), [None if s is None else s.mean for s in stats],
                  [None if s is None else s.ci_low for s in stats], [None if s is None else s.ci_high for s in stats])


# --------------------------------------------------------------------------------------------------- pages


def _page(title: str, body: str, *, count: int, script: str = "") -> str:
    from harness import __version__
    from harness.publish.results import SCHEMA_VERSION

    return Template(_asset("page.html")).substitute(
        title=_e(title), css=_asset("site.css"), body=body, script=script, version=_e(__version__),
        count=count, plural="y" if count == 1 else "ies", schema=SCHEMA_VERSION,
    )


INDEX_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # key, header, type
    ("rank", "#", "rank"), ("run_id", "run", "text"), ("generator", "generator", "text"),
    ("classifier", "classifier", "text"), ("A_bar", "A_bar", "num"), ("verdict", "verdict", "text"),
    ("acc", "acc", "num"), ("worst", "worst", "num"), ("meo", "meo", "num"), ("di", "di", "num"),
    ("md", "md", "num"), ("q", "q", "num"), ("u", "u", "num"), ("fid", "fid", "num"), ("status", "status", "text"),
)


def entry_href(run_id: str) -> str:
    return f"entries/{quote(run_id)}.html"


def spec_name(run_id: str) -> str:
    """The file name of an entry's spec beside its page: what ``bench run --config`` takes."""
    return f"{run_id}.spec.json"


def reproduce_command(run_id: str) -> str:
    """The command that runs an entry's spec again, from the site's folder."""
    return f"bench run --config entries/{spec_name(run_id)}"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _interval_cell(key: str, mean: float | None, ci: Sequence[float] | None, seeds: int) -> str:
    """A numeric cell: the mean, and under it the 95% interval (clipped to the metric's bounds) or why there is
    none."""
    digits = 1 if key == "fid" else 3
    if mean is None:
        return '<td class="num" data-value="">—</td>'
    if ci is not None:
        low, high = clip_interval(key, *ci)
        sub = (f'<span class="ci" title="95% interval">{low:.{digits}f}–{high:.{digits}f}</span>')
    elif seeds < 3:  # no-break spaces: it wraps only as "no interval" / "(1 seed)"
        sub = (f'<span class="ci none" title="an interval needs at least 2 seeds (3 for A_bar and the verdict)">'
               f"no&nbsp;interval ({seeds}&nbsp;seed{'s' if seeds != 1 else ''})</span>")
    else:
        sub = '<span class="ci none" title="this results file carries no interval for it">no interval</span>'
    return f'<td class="num" data-value="{mean!r}"><span class="m">{mean:.{digits}f}</span>{sub}</td>'


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{x:+.3f}"


def verdict_html(v: dict[str, Any] | None) -> str:
    """The verdict's label and its effect ``E [low, high]``; ``—`` (tooltip: no control arm) without one."""
    if v is None:
        return '<span class="none" title="no control arm">—</span>'
    label = str(v["label"])
    interval = (f" [{_signed(v['ci_low'])}, {_signed(v['ci_high'])}]"
                if v.get("ci_low") is not None and v.get("ci_high") is not None else "")
    return (f'<span class="badge v-{_e(label.replace(" ", "-"))}" title="{_e(v.get("reason") or label)}">'
            f'{_e(label)}</span><span class="ci" title="E: the mean paired effect on the bias, with its 95% interval">'
            f"E = {_e(_signed(v.get('effect')))}{_e(interval)}</span>")


def _varying(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Per ``(name, options)`` item, ``key=value`` for the options whose value differs between the items of the
    same name: what tells two entries with the same generator (or classifier) apart."""
    flat = [{k: json.dumps(v) for k, v in _flat(options).items()} for _, options in items]
    notes = []
    for (name, _), mine in zip(items, flat, strict=True):
        peers = [f for (other, _), f in zip(items, flat, strict=True) if other == name]
        vary = [k for k in sorted({k for f in peers for k in f}) if len({f.get(k) for f in peers}) > 1]
        notes.append(", ".join(f"{k}={mine[k]}" for k in vary if k in mine))
    return notes


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _track_chart(track: Track, rows: list[dict[str, Any]]) -> str:
    """The bias ``B_t`` of every row of the track across generations, with 95% whiskers."""
    by_run = {e.run_id: e.results for e in track.entries}
    series = []
    for row in rows:
        r = by_run[row["run_id"]]
        stats = bias_stats(r, row["classifier"])
        series.append(Series(f"{row['run_id']} · {row['classifier']}", [g.generation for g in r.generations],
                             [m for m, _, _ in stats], [lo for _, lo, _ in stats], [hi for _, _, hi in stats]))
    measure = track.results.spec["metrics"]["bias"]
    return line_chart(series, title=f"bias B_t = {measure} per generation (mean, 95% whiskers; lower = less bias)",
                      ylabel=f"B_t = {measure}", bounds=METRIC_BOUNDS["B"], width=760, height=260,
                      legend_columns=2)


def _track_section(track: Track, rows: list[dict[str, Any]], by: str) -> str:
    head = []
    for key, label, kind in INDEX_COLUMNS:
        if kind == "rank":
            head.append(f'<th scope="col" class="num rank" data-key="rank" title="rank within this track by the '
                        f'sorted column">{_e(label)}</th>')
            continue
        better = COLUMNS[key][1] if key in COLUMNS else ""
        tip = COLUMNS[key][0] + f" ({better} is better)" if key in COLUMNS else (
            "the SPEC §5b verdict on the bias: amplified, reduced, no detectable change or inconclusive"
            if key == "verdict" else label)
        sort = ' aria-sort="ascending"' if key == by else ' aria-sort="none"'
        head.append(f'<th scope="col" class="{"num" if kind == "num" else ""}" data-key="{key}" data-type="{kind}" '
                    f'data-better="{better}"{sort} title="{_e(tip)}"><button type="button">{_e(label)}</button></th>')
    specs = [{e.run_id: e.results.spec for e in track.entries}[row["run_id"]] for row in rows]
    gen_notes = _varying([(s["generator"]["name"], s["generator"].get("options", {})) for s in specs])
    cls_notes = _varying([(row["classifier"], next((c.get("options", {}) for c in s["classifiers"]
                                                    if isinstance(c, dict) and c["name"] == row["classifier"]), {}))
                          for row, s in zip(rows, specs, strict=True)])

    body = []
    for row, gen_note, cls_note in zip(rows, gen_notes, cls_notes, strict=True):
        cells = []
        for key, _, kind in INDEX_COLUMNS:
            v = row.get(key)
            if key == "rank":
                cells.append(f'<td class="num rank">{"—" if v is None else v}</td>')
            elif key == "run_id":
                cells.append(f'<td class="run"><a href="{entry_href(v)}">{_e(v)}</a></td>')
            elif key in ("generator", "classifier"):
                note = gen_note if key == "generator" else cls_note
                cells.append(f"<td>{_e(v)}" + (f'<span class="ci">{_e(note)}</span>' if note else "") + "</td>")
            elif key == "verdict":
                verdict = row["verdict"]
                value = "" if verdict is None else str(verdict["label"])
                cells.append(f'<td class="verdict" data-value="{_e(value)}">{verdict_html(verdict)}</td>')
            elif key == "status":
                partial = "" if v == "complete" else f' <span class="muted">{row["generation"]}/{row["generations"]}</span>'
                cells.append(f'<td><span class="badge {_e(v)}">{_e(v)}</span>{partial}</td>')
            else:
                cells.append(_interval_cell(key, v, row["ci"].get(key), row["seeds"]))
        body.append(f'<tr data-run="{_e(row["run_id"])}" data-classifier="{_e(row["classifier"])}">'
                    f"{''.join(cells)}</tr>")
    protocol = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in track.protocol())
    alone = ('<p class="muted">The only entry in this track: nothing here to rank it against.</p>'
             if len(track.entries) == 1 else "")
    reproduce = "".join(f'<li><a href="{entry_href(e.run_id)}">{_e(e.run_id)}</a>: '
                        f'<code>{_e(reproduce_command(e.run_id))}</code></li>' for e in track.entries)
    n = len(track.entries)
    return f"""<section class="track" id="{track.id}" data-track="{track.number}">
<h2>Track {track.number}: {_e(track.summary())}</h2>
<p class="muted">{n} entr{"y" if n == 1 else "ies"}; every setting but the generator and the classifiers is the
same, as <code>bench leaderboard compare</code> checks it.</p>{alone}
<details><summary>the protocol these entries share</summary><dl class="facts">{protocol}</dl></details>
<div class="scroll"><table class="board" id="board-{track.number}">
<thead><tr>{"".join(head)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></div>
<div class="charts">{_track_chart(track, rows)}</div>
<details class="reproduce" open><summary>reproduce (from this folder; add <code>--data-root DIR</code> where your
datasets live)</summary><ul>{reproduce}</ul></details>
</section>"""


def index_html(entries: Sequence[Entry], by: str = "A_bar") -> str:
    tracks = ranked_tracks(entries, by)
    datasets = sorted({e.results.dataset.name for e in entries})
    n = f'{len(entries)} entr{"y" if len(entries) == 1 else "ies"}'
    toc = "".join(f'<li><a href="#{t.id}">Track {t.number}</a>: {_e(t.summary())} '
                  f'<span class="muted">({len(t.entries)} entr{"y" if len(t.entries) == 1 else "ies"})</span></li>'
                  for t, _ in tracks)
    sections = "\n".join(_track_section(t, rows, by) for t, rows in tracks)
    body = f"""<header><h1>bench leaderboard</h1>
<p class="muted">Does bias get amplified when classifiers train on generated data, generation after generation?
{n} on {len(datasets)} dataset(s): {_e(", ".join(datasets)) or "—"}, in {len(tracks)} track(s).</p>
<p>A <strong>track</strong> holds the entries that are fair comparisons of one another: the same dataset and
options, generations, samples per generation, filter, training recipe, metric settings, number of seeds and harness
— they differ only in the generator and the classifiers. Entries are ranked only within a track, by A_bar (lower
first; the geometric mean of A_t = B_(t+1)/B_t, above 1: bias amplified). Each cell holds the last generation's
mean over seeds and, under it, its 95% interval. Click a column header to sort every track by it, again to
reverse.</p>
<ol class="toc">{toc}</ol></header>
<main>
<div class="controls"><label>Filter <input id="filter" type="search" placeholder="generator, classifier, run…"
autocomplete="off"></label><span id="count" aria-live="polite"></span></div>
{sections}
<p class="legend">acc: accuracy; worst: worst-subgroup accuracy; meo: 1 − mean TPR gap; di: disparate impact;
md: max disparity; q: label fidelity; u: unbalanced generation; fid: Fréchet inception distance (— where not
computed); verdict: the paired effect of the synthetic data on the bias, against a control arm trained on real
data only (— where the run has no control arm).</p>
</main>"""
    return _page("bench leaderboard", body, count=len(entries), script=f"<script>\n{_asset('site.js')}</script>")


def _facts(r: Any) -> str:
    s, p = r.spec, r.provenance
    loop = s["loop"]
    rows = [
        ("status", f'<span class="badge {_e(r.status)}">{_e(r.status)}</span> — last generation {r.last_generation} '
                   f'of {loop["generations"]}'),
        ("dataset", f'{_e(s["dataset"]["name"])} <span class="muted">{_e(json.dumps(s["dataset"]["options"]))}</span>'),
        ("generator", f'{_e(s["generator"]["name"])} <span class="muted">{_e(json.dumps(s["generator"]["options"]))}'
                      "</span>"),
        ("classifiers", _e(", ".join(classifier_names(r)))),
        ("filter", f'{_e(s["filter"]["name"])}, keep {_e(s["filter"].get("keep"))}'),
        ("loop", _e(", ".join(f"{k} = {v}" for k, v in loop.items()))),
        ("training", _e(", ".join(f"{k} = {v}" for k, v in s["training"].items()))),
        ("seeds", _e(", ".join(map(str, s["seeds"])))),
        ("FID", _e(json.dumps(p.fid) if p.fid else f'off ({s["metrics"]["fid"]["backbone"]})')),
        ("dataset source", _e(", ".join(f"{k} = {v}" for k, v in p.dataset_source.items()
                                        if k in ("source", "sha256", "content_sha256", "num_train", "num_test")))),
        ("harness", _e(f"{p.harness_version} (git {p.git_commit or '?'}), python {p.python}, torch {p.torch}")),
        ("device", _e(f"{p.device}, precision {p.precision}, {p.platform}")),
        ("time", _e(f"{r.timing.total_s:.1f} s, finished {r.timing.finished_at}")),
    ]
    return '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _numbers_table(r: Any) -> str:
    names = classifier_names(r)
    head = "<th>gen</th>" + "".join(f'<th class="num">{_e(m)} {k}</th>' for m in names
                                    for k in ("acc", "meo", "md", "worst")) + \
        "".join(f'<th class="num">{k}</th>' for k in ("q", "u", "fid"))
    rows = []
    for g in r.generations:
        cells = [f"<td>{g.generation}</td>"]
        for m in names:
            a = g.classifiers[m].mean
            for stat in (a.acc, a.meo, a.md, a.worst_k[0] if a.worst_k else None):
                cells.append(f'<td class="num">{_fmt(stat.mean if stat else None)}</td>')
        gm = g.generator.mean if g.generator else None
        for k in ("q", "u", "fid"):
            cells.append(f'<td class="num">{_fmt(getattr(gm, k).mean if gm else None, 1 if k == "fid" else 3)}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _verdict_table(r: Any) -> str:
    """Per classifier and pooled: the verdict, ``E`` with its interval, the margin and the MDE; or why none."""
    rows = [(m, verdict_of(r, m)) for m in classifier_names(r)] + [("pooled", verdict_of(r, None))]
    if all(v is None for _, v in rows):
        return ('<p class="muted">No verdict: this run has no control arm (<code>loop.control</code>), so the effect '
                "of the synthetic data cannot be told from that of retraining a classifier.</p>")
    body = "".join(
        f"<tr><td>{_e(name)}</td><td>{verdict_html(v)}</td>"
        f'<td class="num">{_fmt(v and v.get("epsilon"))}</td><td class="num">{_fmt(v and v.get("mde"))}</td>'
        f'<td>{_e((v and v.get("reason")) or "")}</td></tr>'
        for name, v in rows)
    return ('<div class="scroll"><table><thead><tr><th>classifier</th><th>verdict, E [95% interval]</th>'
            '<th class="num">margin ε</th><th class="num">MDE</th><th>why</th></tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def entry_html(entry: Entry, samples: list[tuple[int, str, int]]) -> str:
    """The page of one entry. ``samples``: ``(generation, image path relative to the page, display width)``."""
    from harness.publish.report import CLASSIFIER_METRICS, selected_generations

    r = entry.results
    names = classifier_names(r)
    gens = [g.generation for g in r.generations]

    metric_charts = []
    for key, title in (*CLASSIFIER_METRICS, ("worst", "worst-subgroup accuracy"), ("dp", "DP difference"),
                       ("eodds", "equalized-odds difference")):
        series = []
        for m in names:
            stats = [(g.classifiers[m].mean.worst_k[0] if g.classifiers[m].mean.worst_k else None)
                     if key == "worst" else getattr(g.classifiers[m].mean, key) for g in r.generations]
            series.append(_stat_series(m, gens, stats))
        metric_charts.append(line_chart(series, title=f"{title} ({key})", ylabel=key,
                                        bounds=METRIC_BOUNDS.get(key)))

    worst_charts = []
    shown = selected_generations(r.last_generation) if r.generations else []
    for m in names:
        series = []
        for t in shown:
            stats = r.generations[t].classifiers[m].mean.worst_k
            series.append(_stat_series(f"gen {t}", list(range(1, len(stats) + 1)), stats))
        worst_charts.append(line_chart(series, title=f"{m}: worst-k subgroup accuracy", xlabel="rank k (1 = worst)",
                                       ylabel="accuracy", bounds=METRIC_BOUNDS["worst"]))

    amp_html = "<p class=\"muted\">No amplification yet (no generation finished).</p>"
    if r.amplification is not None:
        amp = r.amplification
        b_series = []
        for m in amp.per_classifier:
            stats = bias_stats(r, m)
            b_series.append(Series(m, gens, [b for b, _, _ in stats], [lo for _, lo, _ in stats],
                                   [hi for _, _, hi in stats]))
        a_series = []
        for m, pc in amp.per_classifier.items():
            ivs = a_t_intervals(pc)
            a_series.append(Series(m, [a.t for a in pc.A], [a.value for a in pc.A],
                                   [iv[0] if iv else None for iv in ivs], [iv[1] if iv else None for iv in ivs]))
        bars = "".join(f"<tr><td>{_e(m)}</td>"
                       f"{_interval_cell('A_bar', pc.A_bar, a_bar_interval(pc), len(r.spec['seeds']))}"
                       f"<td>{_e('; '.join(f't={a.t}: {a.reason}' for a in pc.A if a.reason))}</td></tr>"
                       for m, pc in amp.per_classifier.items())
        fit = amp.fit
        fit_text = (f"a = {_fmt(fit.a.estimate)} [{_fmt(fit.a.ci_low)}, {_fmt(fit.a.ci_high)}], "
                    f"b = {_fmt(fit.b.estimate)} [{_fmt(fit.b.ci_low)}, {_fmt(fit.b.ci_high)}], R² = {_fmt(fit.r2)}, "
                    f"{fit.n_points} points" if fit.status == "identified" else fit.message)
        b_chart = line_chart(b_series, title=f"bias B_t = {amp.measure}", ylabel="B_t", bounds=METRIC_BOUNDS["B"])
        a_chart = line_chart(a_series, title="A_t = B_(t+1) / B_t", xlabel="t", ylabel="A_t (1 = no change)",
                             hline=1.0, bounds=METRIC_BOUNDS["A"])
        amp_html = (f'<div class="charts">{b_chart}{a_chart}</div>'
                    f'<div class="scroll"><table><thead><tr><th>classifier</th><th class="num">A_bar</th>'
                    f"<th>undefined A_t</th></tr></thead><tbody>{bars}</tbody></table></div>"
                    f"<p>Fit of eq. 6 ({_e(fit.status)}): {_e(fit_text)}</p>")

    gen_records = [g for g in r.generations if g.generator is not None]
    gts = [g.generation for g in gen_records]
    gen_charts = []
    for key, title, ylabel, ylim, digits in (
        ("fid", "FID per generation", "FID (lower = closer to real)", None, 1),
        ("q", "label fidelity q_t", "q_t (fraction)", (0.0, 1.0), 3),
        ("u", "unbalanced generation u_t", "u_t (TV distance)", (0.0, 1.0), 3),
    ):
        stats = [getattr(g.generator.mean, key) for g in gen_records]
        gen_charts.append(line_chart([_stat_series("", gts, stats)], title=title, ylabel=ylabel, ylim=ylim,
                                     digits=digits, bounds=METRIC_BOUNDS[key]))
    notes = sorted({p.fid_note for g in gen_records for p in g.generator.per_seed if p.fid_note})
    fid_note = f'<p class="muted">{_e("; ".join(notes))}</p>' if notes else ""

    if samples:
        samples_html = '<div class="samples">' + "".join(
            f'<figure><figcaption>generation {t}</figcaption><img src="{quote(src)}" width="{w}" '
            f'alt="generated samples, generation {t}"></figure>' for t, src, w in samples) + "</div>"
    else:
        samples_html = ('<p class="muted">The run directory was not found, so no samples are shown '
                        "(pass <code>--runs DIR</code> to <code>bench leaderboard render</code>).</p>")

    migrated = (f'<p class="warn">Stored with schema_version {entry.source_version}; shown migrated to '
                f"{r.schema_version}.</p>" if entry.migrated else "")
    body = f"""<header><p><a href="../index.html">← leaderboard</a></p><h1>{_e(r.run_id)}</h1>{migrated}</header>
<main>
<h2>Run</h2>{_facts(r)}
<p><a href="{quote(r.run_id)}.json" download>results file (JSON)</a> ·
<a href="{quote(spec_name(r.run_id))}" download>spec (JSON)</a></p>
<h2>Reproduce</h2>
<p id="reproduce">From the folder that holds <code>index.html</code>: <code>{_e(reproduce_command(r.run_id))}</code>
<span class="muted">(add <code>--data-root DIR</code> where your datasets live; the run directory it makes is
<code>runs/{_e(r.run_id)}</code>, the same run_id, because it is the same spec)</span></p>
<h2>Verdict</h2>
<div id="verdict">{_verdict_table(r)}</div>
<h2>Metrics vs generation</h2>
<p class="muted">Mean over {len(r.spec["seeds"])} seed(s); whiskers: 95% t-interval where there are two or more.</p>
<div class="charts" id="metrics">{"".join(metric_charts)}</div>
<h2>Worst-k subgroup accuracy by rank</h2>
<div class="charts" id="worst-k">{"".join(worst_charts)}</div>
<h2>Bias amplification</h2>
<div id="amplification">{amp_html}</div>
<h2>Generators</h2>
<div class="charts" id="generators">{"".join(gen_charts)}</div>{fid_note}
<h2>Generated samples</h2>
<div id="samples">{samples_html}</div>
<h2>Numbers per generation</h2>{_numbers_table(r)}
<h2>Spec</h2><details><summary>the normalised spec (spec_hash {_e(r.spec_hash[:16])}…)</summary>
<pre>{_e(json.dumps(r.spec, indent=2))}</pre></details>
</main>"""
    return _page(r.run_id, body, count=1)


# --------------------------------------------------------------------------------------------------- the site


def find_run_dir(run_id: str, runs: Sequence[Path]) -> Path | None:
    """``R/<run_id>`` (or ``R`` itself when it is that run) for the first folder ``R`` in ``runs`` that has it."""
    for root in runs:
        root = Path(root)
        for candidate in (root / run_id, root):
            results = candidate / "results.json"
            if results.is_file():
                try:
                    if json.loads(results.read_text()).get("run_id") == run_id:
                        return candidate
                except (OSError, ValueError, AttributeError):
                    continue
    return None


def _write_samples(entry: Entry, run_dir: Path, folder: Path) -> list[tuple[int, str, int]]:
    from PIL import Image

    from harness.publish.report import sample_rows

    rows = sample_rows(run_dir, seed=entry.results.spec["seeds"][0])
    out = []
    for t, strip in rows:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"samples-gen-{t:03d}.png"
        Image.fromarray(strip).save(folder / name)
        out.append((t, f"{folder.name}/{name}", strip.shape[1] * 2))  # shown at twice the size, pixelated
    return out


def render_site(entries: Sequence[Entry], out_dir: Path, runs: Sequence[Path] = ()) -> Path:
    """Write ``index.html`` and ``entries/<run_id>.html`` (+ the results and the spec as JSON, sample images)
    under ``out_dir``."""
    from harness.engine.rundir import write_bytes

    out_dir = Path(out_dir)
    pages = out_dir / "entries"
    pages.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        r = entry.results
        run_dir = find_run_dir(r.run_id, runs)
        samples = _write_samples(entry, run_dir, pages / r.run_id) if run_dir is not None else []
        write_bytes(pages / f"{r.run_id}.html", entry_html(entry, samples).encode())
        write_bytes(pages / f"{r.run_id}.json",
                    (json.dumps(r.model_dump(mode="json"), indent=2) + "\n").encode())
        write_bytes(pages / spec_name(r.run_id), (json.dumps(r.spec, indent=2) + "\n").encode())
    index = out_dir / "index.html"
    write_bytes(index, index_html(entries).encode())
    return index
