"""Choose the pair network: which dates are correlated with which.

The original TIO paired each date with the next 4 later dates; a redundant
network lets the inversion average out noise and reject outliers (Bontemps et
al. 2018). :func:`select_pairs` applies the rules; :func:`describe_network`
reports connectivity, because a disconnected network can only be tied together
by temporal smoothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import NetworkError

__all__ = ["NetworkReport", "Pair", "describe_network", "select_pairs"]


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


def select_pairs(
    dates: Sequence[dt.date],
    *,
    max_next: int = 4,
    min_days: int = 0,
    max_days: int | None = None,
) -> list[Pair]:
    """Each date with its next ``max_next`` dates, within ``[min_days, max_days]``.

    Raises
    ------
    NetworkError
        Fewer than two dates, dates not strictly increasing, or no pair left.
    """
    if len(dates) < 2:
        raise NetworkError(f"need at least 2 dates to form a pair, got {len(dates)}")
    if any(b <= a for a, b in zip(dates, dates[1:], strict=False)):
        raise NetworkError("dates must be strictly increasing (one scene per date)")
    pairs = []
    for i, d1 in enumerate(dates):
        for j in range(i + 1, min(i + 1 + max_next, len(dates))):
            days = (dates[j] - d1).days
            if days < min_days or (max_days is not None and days > max_days):
                continue
            pairs.append(Pair(i, j, d1, dates[j]))
    if not pairs:
        raise NetworkError(
            f"no pair satisfies the rules (next {max_next} dates, {min_days} to "
            f"{max_days or 'any'} days apart) among {len(dates)} dates: relax pairs.min_days "
            "or pairs.max_days"
        )
    return pairs


@dataclass(frozen=True)
class NetworkReport:
    dates: tuple[dt.date, ...]
    pairs: tuple[Pair, ...]
    components: tuple[tuple[int, ...], ...]
    pairs_per_date: tuple[int, ...]

    @property
    def connected(self) -> bool:
        return len(self.components) == 1

    def lines(self) -> list[str]:
        out = [
            f"{len(self.dates)} dates, {len(self.pairs)} pairs, "
            f"{len(self.components)} connected component(s)"
        ]
        for k, d in enumerate(self.dates):
            out.append(f"  {d.isoformat()}  {self.pairs_per_date[k]:3d} pairs")
        if not self.connected:
            for c in self.components:
                out.append("  component: " + ", ".join(self.dates[k].isoformat() for k in c))
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
    return NetworkReport(tuple(dates), tuple(pairs), comps, tuple(count))
