"""Choose the pair network: which dates are correlated with which.

The original TIO paired each date with the next 4 later dates; a redundant
network lets the inversion average out noise and reject outliers (Bontemps et
al. 2018). :func:`select_pairs` applies the rules, which combine:

* each date with its next ``max_next`` dates;
* temporal baseline between ``min_days`` and ``max_days``;
* optionally, seasonal pairs: dates of different years within
  ``±seasonal_days`` of the same day of year (similar snow, vegetation and sun),
  whatever ``max_next`` and ``max_days`` say;
* optionally, at most ``max_per_date`` pairs through any date (shortest
  baselines kept first, so consecutive dates stay linked).

:func:`describe_network` reports connectivity, because a disconnected network
can only be tied together by temporal smoothing; :func:`plot_network` draws it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import NetworkError

__all__ = ["NetworkReport", "Pair", "describe_network", "plot_network", "select_pairs"]


@dataclass(frozen=True, order=True)
class Pair:
    """Indices into the date list (``i < j``) and the two dates."""

    i: int
    j: int
    date1: dt.date
    date2: dt.date

    @property
    def name(self) -> str:
        """``YYYYMMDD_YYYYMMDD``: the file stem of this pair's products."""
        return f"{self.date1:%Y%m%d}_{self.date2:%Y%m%d}"

    @property
    def days(self) -> int:
        return (self.date2 - self.date1).days


def _doy_distance(a: dt.date, b: dt.date) -> int:
    """Days between the two dates' days of year, around the year (0 to 183)."""
    d = abs(a.timetuple().tm_yday - b.timetuple().tm_yday)
    return min(d, 365 - d)


def select_pairs(
    dates: Sequence[dt.date],
    *,
    max_next: int = 4,
    min_days: int = 0,
    max_days: int | None = None,
    seasonal_days: int | None = None,
    max_per_date: int | None = None,
) -> list[Pair]:
    """Pairs of ``dates`` by the rules of the module docstring, sorted by (i, j).

    Parameters
    ----------
    max_next
        Each date with its next ``max_next`` dates.
    min_days, max_days
        Temporal baseline limits (days) of every pair (seasonal pairs too for
        ``min_days``; ``max_days`` does not apply to seasonal pairs).
    seasonal_days
        Also pair dates at least 300 days apart whose days of year differ by at
        most this (None: no seasonal pairs).
    max_per_date
        Largest number of pairs through one date; candidates are taken by
        increasing baseline (consecutive dates first), a pair is skipped when
        either date is full. None: no cap.

    Raises
    ------
    NetworkError
        Fewer than two dates, dates not strictly increasing, or no pair left.
    """
    if len(dates) < 2:
        raise NetworkError(f"need at least 2 dates to form a pair, got {len(dates)}")
    if any(b <= a for a, b in zip(dates, dates[1:], strict=False)):
        raise NetworkError("dates must be strictly increasing (one scene per date)")
    # candidates with a rank: next-N pairs by index distance, then seasonal ones
    cand: dict[tuple[int, int], tuple] = {}
    for i, d1 in enumerate(dates):
        for j in range(i + 1, min(i + 1 + max_next, len(dates))):
            days = (dates[j] - d1).days
            if days < min_days or (max_days is not None and days > max_days):
                continue
            cand[(i, j)] = (0, j - i, days)
    if seasonal_days is not None:
        for i, d1 in enumerate(dates):
            for j in range(i + 1, len(dates)):
                days = (dates[j] - d1).days
                if days < max(300, min_days) or (i, j) in cand:
                    continue
                if _doy_distance(d1, dates[j]) <= seasonal_days:
                    cand[(i, j)] = (1, j - i, days)
    chosen = sorted(cand, key=lambda ij: (cand[ij], ij))
    if max_per_date is not None:
        count = [0] * len(dates)
        kept = []
        for i, j in chosen:
            if count[i] < max_per_date and count[j] < max_per_date:
                kept.append((i, j))
                count[i] += 1
                count[j] += 1
        chosen = kept
    pairs = [Pair(i, j, dates[i], dates[j]) for i, j in sorted(chosen)]
    if not pairs:
        raise NetworkError(
            f"no pair satisfies the rules (next {max_next} dates, {min_days} to "
            f"{max_days or 'any'} days apart) among {len(dates)} dates: relax pairs.min_days "
            "or pairs.max_days"
        )
    return pairs


@dataclass(frozen=True)
class NetworkReport:
    """What :func:`describe_network` finds.

    Attributes
    ----------
    components
        Connected components of the date graph (date indices), sorted by first date.
    pairs_per_date
        Number of pairs through each date.
    smoothing_only
        Indices of the dates outside the largest component (ties: the earliest):
        the inversion places them relative to the others only through its
        temporal smoothing (``inversion.smoothing_gamma2``).
    """

    dates: tuple[dt.date, ...]
    pairs: tuple[Pair, ...]
    components: tuple[tuple[int, ...], ...]
    pairs_per_date: tuple[int, ...]
    smoothing_only: tuple[int, ...] = ()

    @property
    def connected(self) -> bool:
        return len(self.components) == 1

    def warning(self) -> str | None:
        """The disconnected-network warning, or None when the network is connected."""
        if self.connected:
            return None
        return (
            f"the pair network is disconnected ({len(self.components)} components): "
            f"{len(self.smoothing_only)} date(s) are tied to the others only by temporal "
            "smoothing (inversion.smoothing_gamma2); relax pairs.max_days or add "
            "pairs.max_next / pairs.seasonal_days to connect them"
        )

    def lines(self) -> list[str]:
        days = [p.days for p in self.pairs]
        out = [
            f"{len(self.dates)} dates, {len(self.pairs)} pairs, "
            f"{len(self.components)} connected component(s)",
            f"baselines: {min(days)} to {max(days)} days" if days else "baselines: none",
            "  date        pairs",
        ]
        smooth = set(self.smoothing_only)
        for k, d in enumerate(self.dates):
            note = "  tied only by smoothing" if k in smooth else ""
            out.append(f"  {d.isoformat()}  {self.pairs_per_date[k]:3d}{note}")
        if not self.connected:
            for c in self.components:
                out.append("  component: " + ", ".join(self.dates[k].isoformat() for k in c))
            out.append("warning: " + (self.warning() or ""))
        return out


def describe_network(dates: Sequence[dt.date], pairs: Sequence[Pair]) -> NetworkReport:
    """Connected components (union-find over dates) and pairs through each date."""
    parent = list(range(len(dates)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    count = [0] * len(dates)
    for p in pairs:
        parent[find(p.i)] = find(p.j)
        count[p.i] += 1
        count[p.j] += 1
    groups: dict[int, list[int]] = {}
    for k in range(len(dates)):
        groups.setdefault(find(k), []).append(k)
    comps = tuple(sorted((tuple(g) for g in groups.values()), key=lambda g: g[0]))
    main = max(comps, key=lambda g: (len(g), -g[0]))
    others = tuple(sorted(k for g in comps if g is not main for k in g))
    return NetworkReport(tuple(dates), tuple(pairs), comps, tuple(count), others)


def plot_network(report: NetworkReport, path: str | Path, *, title: str | None = None) -> Path:
    """Draw the network to a PNG: dates on the time axis, one arc per pair coloured by
    its baseline (days); dates tied only by smoothing are drawn hollow in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.collections import LineCollection

    from .raster import atomic_path

    path = Path(path)
    dates = [np.datetime64(d.isoformat(), "D") for d in report.dates]
    x = mdates.date2num(np.array(dates, dtype="datetime64[D]").astype("datetime64[ms]"))
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    segs, vals = [], []
    t = np.linspace(0, np.pi, 40)
    for p in report.pairs:
        x1, x2 = x[p.i], x[p.j]
        c, r = (x1 + x2) / 2, (x2 - x1) / 2
        segs.append(np.column_stack([c - r * np.cos(t), r * np.sin(t)]))
        vals.append(p.days)
    span = (x[-1] - x[0]) or 1.0
    if segs:
        lc = LineCollection(segs, cmap="viridis", linewidths=1.2, alpha=0.85)
        lc.set_array(np.asarray(vals, dtype=float))
        ax.add_collection(lc)
        fig.colorbar(lc, ax=ax, pad=0.01).set_label("temporal baseline (days)")
    smooth = set(report.smoothing_only)
    main = [k for k in range(len(x)) if k not in smooth]
    ax.plot(x[main], np.zeros(len(main)), "o", color="black", ms=4, zorder=3, label="date")
    if smooth:
        ks = sorted(smooth)
        ax.plot(
            x[ks],
            np.zeros(len(ks)),
            "o",
            mfc="white",
            mec="red",
            ms=6,
            zorder=4,
            label="tied only by smoothing",
        )
    top = max((s[:, 1].max() for s in segs), default=1.0)
    ax.set_xlim(x[0] - 0.03 * span, x[-1] + 0.03 * span)
    ax.set_ylim(-0.05 * top - 1e-9, 1.08 * top + 1e-9)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator())
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.set_title(
        title
        or f"Pair network: {len(report.dates)} dates, {len(report.pairs)} pairs, "
        f"{len(report.components)} connected component(s)"
    )
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
