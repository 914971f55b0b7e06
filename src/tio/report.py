"""One self-contained HTML report of a run, with a verdict and its reasons.

Pictures are embedded (data URIs), so the file can be mailed or opened offline;
links to the products are relative to the run folder. The verdict is one of
``good``, ``usable with care`` and ``reprocess``, with the reasons that made it
(:func:`assess`), for a user deciding whether to download or rerun.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from . import __version__
from .raster import atomic_path

__all__ = ["Assessment", "assess", "write_report"]


@dataclass
class Assessment:
    """Verdict on a run and the reasons for it."""

    verdict: str = "good"
    reasons: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def _worse(self, level: str, reason: str) -> None:
        order = ["good", "usable with care", "reprocess"]
        if order.index(level) > order.index(self.verdict):
            self.verdict = level
        self.reasons.append(reason)


def network_of(ts: xr.Dataset):
    """The pair network of a time series (:func:`tio.network.describe_network`)."""
    from .network import Pair, describe_network

    def day(t) -> dt.date:
        return dt.date.fromisoformat(str(np.datetime_as_string(t, unit="D")))

    dates = [day(t) for t in ts["time"].values]
    index = {d: i for i, d in enumerate(dates)}
    pairs = []
    for t1, t2 in zip(ts["date1"].values, ts["date2"].values, strict=True):
        d1, d2 = day(t1), day(t2)
        pairs.append(Pair(index[d1], index[d2], d1, d2))
    return describe_network(dates, pairs)


def score_medians(scores) -> np.ndarray:
    """Median correlation score of each pair (0 for a pair without any score).

    ``scores``: the scores (pair, y, x), or already one median per pair (pair,).
    """
    scores = np.asarray(scores)
    if scores.ndim == 1:
        return np.nan_to_num(scores.astype("float64"), nan=0.0)
    with np.errstate(all="ignore"):
        return np.array([np.nanmedian(s) if np.isfinite(s).any() else 0.0 for s in scores])


def assess(
    ts: xr.Dataset,
    *,
    scores: np.ndarray | None = None,
    pixel_size: float | None = None,
    dropped: str = "",
) -> Assessment:
    """Judge a run from its products (and the pair scores when available)."""
    from .quicklook import iso_dates

    a = Assessment()
    dates = iso_dates(ts)
    network = network_of(ts)
    comps = [[dates[k] for k in c] for c in network.components]
    a.facts["dates"] = f"{len(dates)} ({dates[0]} to {dates[-1]})"
    a.facts["pairs"] = str(len(network.pairs))
    a.facts["connected components"] = str(len(comps))
    if len(dates) < 3:
        a._worse("usable with care", f"only {len(dates)} dates: no redundancy to check the pairs")
    if len(comps) > 1:
        gaps = [f"{c[-1]} and {n[0]}" for c, n in zip(comps, comps[1:], strict=False)]
        a._worse(
            "usable with care",
            "network disconnected between " + ", ".join(gaps) + ": the sub-networks are joined "
            "only by temporal smoothing, so the displacement across the gap is an interpolation "
            "(add pairs across it: raise pairs.max_next or pairs.max_days)",
        )
    if dropped:
        a._worse("usable with care", f"dates left out of the stack: {dropped}")
    final = ts["cumulative_ew"].values[-1]
    inverted = float(np.isfinite(final).mean())
    a.facts["area inverted"] = f"{inverted:.0%}"
    if inverted < 0.2:
        a._worse(
            "reprocess",
            f"only {inverted:.0%} of the area was inverted: try a larger correlation window, "
            "a lower correlation.min_score or more pairs",
        )
    elif inverted < 0.6:
        a._worse(
            "usable with care",
            f"{inverted:.0%} of the area was inverted: clouds, snow or low texture elsewhere",
        )
    if "smoothed" in ts:
        sm = ts["smoothed"].values.astype(bool)
        share = sm.reshape(sm.shape[0], -1).mean(axis=1)
        tied = [d for d, s in zip(dates, share, strict=True) if s > 0.5]
        if tied:
            a._worse(
                "usable with care",
                f"dates tied only by smoothing over most of the area: {', '.join(tied)}",
            )
    if scores is not None and np.size(scores):
        med = score_medians(scores)
        low = float((med < 0.3).mean())
        a.facts["median correlation score"] = f"{float(np.median(med)):.2f}"
        if low > 0.5:
            a._worse(
                "reprocess",
                f"most pairs ({low:.0%}) have a median score below 0.3 over the area: "
                "try a larger window (correlation.window) or a pre-filter",
            )
    rms = np.hypot(ts["rms_pair_ew"].values, ts["rms_pair_ns"].values)
    if np.isfinite(rms).any():
        med_rms = float(np.nanmedian(rms))
        a.facts["median residual RMS per pair"] = f"{med_rms:.2f} m"
        if pixel_size and med_rms > pixel_size:
            a._worse(
                "usable with care",
                f"the pairs disagree with the time series by {med_rms:.1f} m (median RMS), more "
                f"than a pixel ({pixel_size:g} m): look for cloud, snow or bad pairs in "
                "rms_pair.csv",
            )
    if not a.reasons:
        a.reasons.append(
            "connected network, most of the area inverted, pairs consistent with the series"
        )
    return a


def _img(path: Path, alt: str) -> str:
    mime = "image/apng" if path.name.startswith("animation") else "image/png"
    data = base64.b64encode(path.read_bytes()).decode()
    alt = html.escape(alt)
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{alt}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
img{max-width:100%} figure{margin:1em 0} figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
.verdict{padding:.6em 1em;border-radius:6px;font-weight:bold}
.good{background:#d8f0d8}.usable{background:#fbeec8}.reprocess{background:#f6d0d0}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
"""


def write_report(
    run_dir: str | Path,
    ts: xr.Dataset,
    assessment: Assessment,
    *,
    pictures: list[tuple[Path, str]],
    inputs: list[str],
    products: list[Path],
) -> Path:
    """Write ``report.html`` in ``run_dir``."""
    from .quicklook import iso_dates

    run = Path(run_dir)
    dates = iso_dates(ts)
    cls = {"good": "good", "usable with care": "usable", "reprocess": "reprocess"}[
        assessment.verdict
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>TIO report {dates[0]} to {dates[-1]}</title><style>{_CSS}</style></head><body>",
        f"<h1>TIO displacement time series, {dates[0]} to {dates[-1]}</h1>",
        f"<p class='verdict {cls}'>Verdict: {html.escape(assessment.verdict)}</p><ul>",
        *[f"<li>{html.escape(r)}</li>" for r in assessment.reasons],
        "</ul><h2>Summary</h2><table>",
        *[
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in assessment.facts.items()
        ],
        "</table>",
    ]
    pics = {p.name: (p, cap) for p, cap in pictures if p.exists()}
    sections = [
        ("Displacement", ["quicklook_cumulative.png", "animation.png", "quicklook_velocity.png"]),
        ("Network and coverage", ["network.png", "quicklook_coverage.png"]),
        ("Residuals", ["quicklook_rms.png", "rms_dates.png"]),
        ("Time series at points", ["points.png"]),
    ]
    for title, names in sections:
        shown = [pics[n] for n in names if n in pics]
        if shown:
            parts.append(f"<h2>{title}</h2>")
            parts += [_img(p, cap) for p, cap in shown]
    rms_csv = run / "rms_pair.csv"
    if rms_csv.exists():
        rows = [line.split(",") for line in rms_csv.read_text().splitlines()]
        head, body = rows[0], rows[1:]
        try:
            body.sort(key=lambda r: -(float(r[4] or 0) ** 2) - float(r[5] or 0) ** 2)
        except (ValueError, IndexError):
            pass
        parts.append("<h2>Pairs with the largest residuals</h2><table><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in head]
        parts.append("</tr>")
        for r in body[:10]:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Inputs</h2><ul>")
    parts += [f"<li>{html.escape(s)}</li>" for s in inputs]
    parts.append("</ul>")
    config = run / "config.toml"
    if config.exists():
        parts.append(f"<h2>Parameters</h2><pre>{html.escape(config.read_text())}</pre>")
    parts.append("<h2>Products</h2><ul>")
    for p in sorted(set(products)):
        if p.exists() and p.is_file():
            rel = p.resolve().relative_to(run.resolve()).as_posix()
            size = p.stat().st_size
            link = html.escape(rel)
            parts.append(f"<li><a href='{link}'>{link}</a> ({size / 1e6:.2f} MB)</li>")
    parts.append("</ul>")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<p><small>tio {__version__}, {now}</small></p></body></html>")
    path = run / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
