"""Peak memory of the stages after correlation on a large pair grid, without correlating.

Writes ``--pairs-per-date`` x ``--dates`` generated pair maps (GeoTIFFs as ``tio
run`` writes them: EW, NS, score on a ``--grid`` x ``--grid`` grid; noise, a
misregistration per pair and a moving disc) and runs what ``tio run`` runs on
them after the correlation, in this process, one stage after the other:
corrections (automatic stable ground) writing the corrected maps, the Zarr pair
cube, the inversion by blocks of rows (``tio.compute.invert_blocks``, tasks in
this process) and the products (GeoTIFFs and NetCDF). Prints each stage's wall
time and the peak resident memory of the process during it (sampled every
0.05 s; a peak shorter than that can be missed).

A Sentinel-2 tile at the default step 8 is a grid of 1373 x 1373 values::

    python benchmarks/bench_stages.py --grid 1373 --dates 12 --pairs-per-date 4

``--whole`` runs the stages as they were before they were bounded (every map
in memory for the corrections, the whole time series loaded for the products):
run it on the code from before (``PYTHONPATH=old/src``) for the comparison in
the README (on the current code it still bounds the inversion and the writers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class Peak:
    """Peak RSS of this process while the ``with`` block runs."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()
        self.t0 = time.monotonic()
        return self

    def watch(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.05)

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.t0
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def make_pairs(folder: Path, grid: int, n_dates: int, per_date: int, seed: int = 0):
    import xarray as xr

    from tio.network import select_pairs
    from tio.raster import coords_from_transform, write_pair

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dates = [dt.date(2021, 1, 1) + dt.timedelta(days=30 * k) for k in range(n_dates)]
    pairs = select_pairs(dates, max_next=per_date)
    transform = [80.0, 0.0, 300000.0, 0.0, -80.0, 5100000.0]
    x, y = coords_from_transform(transform, (grid, grid))
    yy, xx = np.mgrid[0:grid, 0:grid]
    disc = ((yy - grid / 2) ** 2 + (xx - grid / 3) ** 2 < (grid / 6) ** 2).astype("float32")
    crs = "EPSG:32632"
    from pyproj import CRS

    wkt = CRS.from_user_input(crs).to_wkt()
    for p in pairs:
        years = (p.date2 - p.date1).days / 365.25
        maps = {}
        for c, v in (("ew", 3.0), ("ns", -2.0)):
            noise = rng.standard_normal((grid, grid), dtype=np.float32)
            maps[c] = (v * years * disc + rng.normal(0, 1) + 0.5 * noise).astype("float32")
        score = np.clip(0.8 + 0.1 * rng.standard_normal((grid, grid), dtype=np.float32), 0, 1)
        holes = rng.random((grid, grid), dtype=np.float32) < 0.05
        for c in maps:
            maps[c][holes] = np.nan
        ds = xr.Dataset(
            {c: (("y", "x"), a) for c, a in {**maps, "score": score}.items()},
            coords={"x": x, "y": y},
            attrs={"crs": wkt, "transform": transform, "units": "m", "step": 8},
        )
        write_pair(folder / f"{p.name}.tif", ds, p.date1, p.date2)
    return pairs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, default=1373)
    ap.add_argument("--dates", type=int, default=12)
    ap.add_argument("--pairs-per-date", type=int, default=4)
    ap.add_argument("--whole", action="store_true", help="the stages as before (for comparison)")
    ap.add_argument("--keep", type=Path, help="folder (pair maps reused if there)")
    args = ap.parse_args(argv)

    from tio.compute import Executor, invert_blocks, write_pair_cube
    from tio.corrections import correct_pairs
    from tio.products import write_products
    from tio.raster import read_pair, write_pair

    root = args.keep or Path(tempfile.mkdtemp(prefix="tio-stages-"))
    raw, fixed = root / "raw", root / "corrected"
    t0 = time.monotonic()
    from tio.network import select_pairs

    dates = [dt.date(2021, 1, 1) + dt.timedelta(days=30 * k) for k in range(args.dates)]
    pairs = select_pairs(dates, max_next=args.pairs_per_date)
    if len(list(raw.glob("*.tif"))) != len(pairs):
        pairs = make_pairs(raw, args.grid, args.dates, args.pairs_per_date)
        print(f"# {len(pairs)} pair maps generated in {time.monotonic() - t0:.0f} s")
    files = [raw / f"{p.name}.tif" for p in pairs]
    print(
        f"# grid {args.grid}², {args.dates} dates, {len(pairs)} pairs; "
        f"{'whole arrays (as before)' if args.whole else 'bounded stages'}",
        flush=True,
    )
    rows = []
    with Peak() as m:
        if args.whole:
            results = correct_pairs([read_pair(f) for f in files])
        else:
            from tio.corrections import iter_corrected
            from tio.pipeline import _PairFiles

            results = iter_corrected(_PairFiles(files), scratch=root / ".scratch")
        for p, (ds, _) in zip(pairs, results, strict=True):
            write_pair(fixed / f"{p.name}.tif", ds, p.date1, p.date2)
        del results
    rows.append(("corrections", m))
    with Peak() as m:
        write_pair_cube(root / "cube.zarr", [fixed / f"{p.name}.tif" for p in pairs], pairs, "k")
    rows.append(("pair cube", m))
    with Peak() as m:
        ts = invert_blocks(root / "cube.zarr", root / "ts.zarr", {}, Executor(), key="k")
    rows.append(("inversion", m))
    with Peak() as m:
        if args.whole:
            ts = ts.load()
        write_products(ts, root / "products")
    rows.append(("products", m))
    print("| stage | time (s) | peak memory (GiB) |")
    print("| --- | --- | --- |")
    for name, m in rows:
        print(f"| {name} | {m.seconds:.0f} | {m.peak / 2**30:.2f} |")


if __name__ == "__main__":
    main()
