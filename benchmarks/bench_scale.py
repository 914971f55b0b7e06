"""How TIO scales: wall time and peak memory of ``tio run`` on generated scenes.

For each area (side in pixels) and each number of workers, runs the real command
``tio run --workers N`` (a local Dask cluster of N single-thread worker
processes) in a subprocess on generated scenes, and measures

* the wall time of the whole run (cluster start, stack, correlation,
  corrections, inversion, products; quicklooks off);
* the peak resident memory of the whole process tree (the ``tio`` process, the
  Dask nannies and workers), sampled every 0.2 s with psutil (the sum over the
  processes at one instant; a peak shorter than the sampling can be missed).

The scenes are cheap to generate at any size: a smoothed random texture
(Sentinel-2-like 10 m pixels, UTM), shifted by a known sub-pixel offset per
date with bilinear resampling, plus noise, written as uint16 GeoTIFFs. The
scenes of an area are generated once and shared by its runs (not timed).

Usage::

    python benchmarks/bench_scale.py                       # 1000, 2000, 5000 px; 1 and 2 workers
    python benchmarks/bench_scale.py --sizes 10980 --workers 2 --dates 3 --pairs-per-date 2
    python benchmarks/bench_scale.py --sizes 1000 --step 16 --keep /tmp/scale
    python benchmarks/bench_scale.py --sizes 10980 --workers 0 --dates 2 --pairs-per-date 1

A whole Sentinel-2 tile with 50 dates and 235 pairs (each date paired with its
next 5; ``--min-pairs`` stops before generating anything if the network would be
smaller), about 9 GB of scenes plus 13 GB of ``stack.zarr`` in ``--keep``::

    python benchmarks/bench_scale.py --sizes 10980 --dates 50 --pairs-per-date 5 \
        --step 32 --workers 2 --min-pairs 200 --keep /tmp/tio-tile

Besides the table, each run prints its stages' times, read from ``tio.log``.

The default run (3 areas x 2 worker counts, 4 dates, 5 pairs each: 2.6 M
correlation windows per worker count) should take about 10-15 minutes on an idle
2-core machine correlating ~12k windows/s (an estimate from that speed, not a
measurement); on a loaded machine it takes much longer. Timings depend on the
machine's load: the table gives windows/s so that runs can be compared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_scenes(folder: Path, size: int, n_dates: int, seed: int = 0) -> None:
    """``n_dates`` uint16 GeoTIFFs of ``size`` x ``size`` px, shifted 0.3 px per date.

    One texture is made and each date is that texture shifted (bilinear) plus
    noise, generated and written by bands of rows (memory: the texture and one
    band), as tiled DEFLATE GeoTIFFs at a fast compression level: 50 dates of a
    whole tile (10980 px) take about 11 GB of disk.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 1.5)
    base *= 1000 / base.std()
    base += 3000
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint16",
        crs="EPSG:32632",
        transform=from_origin(300000, 5100000, 10, 10),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        zlevel=1,
        predictor=2,
        num_threads="ALL_CPUS",
    )
    start = dt.date(2021, 1, 1)
    rows = 1024  # a band of rows (a multiple of the 512-px tiles)
    for k in range(n_dates):
        dy, dx = 0.3 * k, -0.2 * k  # rows, columns: a uniform motion
        date = start + dt.timedelta(days=30 * k)
        with rasterio.open(folder / f"S2_{date:%Y%m%d}.tif", "w", **profile) as dst:
            for r0 in range(0, size, rows):
                r1 = min(size, r0 + rows)
                if k:
                    # the band's rows plus a margin wider than the shift, shifted
                    a, b = max(0, r0 - 2 - int(abs(dy))), min(size, r1 + 2 + int(abs(dy)))
                    part = ndimage.shift(base[a:b], (dy, dx), order=1, mode="nearest")
                    img = part[r0 - a : r0 - a + (r1 - r0)]  # = the whole image shifted
                else:
                    img = base[r0:r1]
                img = img + 20 * rng.standard_normal(img.shape, dtype=np.float32)
                dst.write(
                    np.clip(img, 1, 65535).astype("uint16"), 1, window=Window(0, r0, size, r1 - r0)
                )


class PeakMemory:
    """Peak of the summed RSS of a process and all its descendants."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.proc = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


_STAGES = (  # the log line that ends each stage
    ("stack", "stack: "),
    ("correlation", "correlate: "),
    ("corrections", "correct: "),
    ("inversion", "invert: "),
    ("products", "done in "),
)


def stage_seconds(log: Path) -> dict[str, float]:
    """Seconds of each stage, from the time stamps of ``tio.log``."""
    stamps = []
    for line in log.read_text().splitlines():
        try:
            t = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        except ValueError:
            continue
        stamps.append((t, line[24:].split(": ", 1)[-1] if ": " in line[24:] else line[24:]))
    out: dict[str, float] = {}
    if not stamps:
        return out
    prev = stamps[0][0]
    for name, marker in _STAGES:
        last = [t for t, msg in stamps if msg.startswith(marker)]
        if last:
            out[name] = (last[-1] - prev).total_seconds()
            prev = last[-1]
    return out


def run_once(scenes: Path, out: Path, workers: int, args) -> tuple[float, int, int]:
    cmd = [
        sys.executable,
        "-m",
        "tio",
        "run",
        str(scenes),
        "-o",
        str(out),
        *(["--scheduler", "synchronous"] if workers == 0 else ["--workers", str(workers)]),
        "--pairs-per-date",
        str(args.pairs_per_date),
        "--step",
        str(args.step),
        "--no-quicklooks",
        "-q",
    ]
    if args.memory_limit:
        cmd += ["--memory-limit", args.memory_limit]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    mem = PeakMemory(proc.pid)
    rc = proc.wait()
    seconds = time.monotonic() - t0
    peak = mem.stop()
    if rc:
        raise SystemExit(f"tio run failed ({rc}); see {out / 'tio.log'}")
    n_pairs = len(list((out / "pairs" / "raw").glob("[0-9]*.tif")))
    stages = stage_seconds(out / "tio.log")
    print("#   stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()), flush=True)
    return seconds, peak, n_pairs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000])
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="local Dask workers; 0: no Dask (--scheduler synchronous, correlation on all cores)",
    )
    ap.add_argument("--dates", type=int, default=4)
    ap.add_argument("--pairs-per-date", type=int, default=2)
    ap.add_argument("--step", type=int, default=8)
    ap.add_argument("--memory-limit", help="per worker, e.g. 8GB (default: Dask's)")
    ap.add_argument("--keep", type=Path, help="folder for scenes and runs (kept)")
    ap.add_argument(
        "--min-pairs", type=int, default=0, help="stop before any run if the network is smaller"
    )
    args = ap.parse_args(argv)

    from tio.network import select_pairs

    start = dt.date(2021, 1, 1)
    dates = [start + dt.timedelta(days=30 * k) for k in range(args.dates)]
    n_net = len(select_pairs(dates, max_next=args.pairs_per_date))
    print(f"# {args.dates} dates, {n_net} pairs ({args.pairs_per_date} next dates each)")
    if n_net < args.min_pairs:
        raise SystemExit(f"{n_net} pairs, fewer than --min-pairs {args.min_pairs}")

    root = args.keep or Path(tempfile.mkdtemp(prefix="tio-scale-"))
    rows = []
    try:
        for size in args.sizes:
            scenes = root / f"scenes_{size}_{args.dates}"
            if not scenes.is_dir():  # generated under a temporary name: complete or absent
                t0 = time.monotonic()
                tmp = root / f"scenes_{size}_{args.dates}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                make_scenes(tmp, size, args.dates)
                tmp.rename(scenes)
                print(
                    f"# {size} px: {args.dates} scenes generated in {time.monotonic() - t0:.0f} s"
                )
            for w in args.workers:
                out = root / f"run_{size}_{w}"
                shutil.rmtree(out, ignore_errors=True)
                seconds, peak, n_pairs = run_once(scenes, out, w, args)
                windows = n_pairs * ((size + args.step - 1) // args.step) ** 2
                rows.append((size, args.dates, n_pairs, w, seconds, peak, windows / seconds))
                print(
                    f"# {size} px, {w} worker(s): {seconds:.0f} s, peak {peak / 2**30:.2f} GiB",
                    flush=True,
                )
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"step {args.step} px; whole `tio run` (quicklooks off), local Dask cluster")
    print()
    print("| area (px) | dates | pairs | workers | time (s) | peak memory (GiB) | windows/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, d, p, w, s, peak, rate in rows:
        print(f"| {size}² | {d} | {p} | {w} | {s:.0f} | {peak / 2**30:.2f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
