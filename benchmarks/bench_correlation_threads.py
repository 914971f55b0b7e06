"""How TIO's correlator uses its threads, measured on the small crops of bench_correlation.

python benchmarks/bench_correlation_threads.py [--repeats 3] [--data DIR]   (about 3 minutes)

Builds the 90 small-crop pairs of ``bench_correlation.py`` (the same crops, warps and noise
levels; the noise draws differ) and prints:

1. *Pause before a call.* TIO's windows per second over all pairs called back to back,
   against each call preceded by a 0.3 s sleep or by a scikit-image loop on the same pair
   (what the pair-by-pair ordering of the comparisons did), with two threads and with
   one. On a machine whose cores idle between calls, a multi-threaded call after a pause
   runs slower; this is why ``bench_correlation.py`` times each method over all the pairs
   of a case in turn.
2. *Thread pool and task hand-out, paired per call.* Every pair is correlated with the
   current code and with a variant, in random order, and the per-call times are compared
   (single runs scatter by +-15 % on a shared machine; paired calls do not):
   a new pool of threads per call (as before the process-wide pool) and every task handed
   to a pool of ``workers`` threads while the caller waits (as before ``_map_tasks``).
   The offsets are the same in every variant (checked).

The ratios are of wall time, variant / current: above 1 means the current code is faster.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_correlation as bc  # noqa: E402
from tio import _correlation as _c  # noqa: E402
from tio.correlation import correlate_arrays  # noqa: E402


def small_crop_pairs(data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (reference, secondary) inputs of every synthetic pair of bench_correlation."""
    pairs = []

    def capture(ref, sec):
        pairs.append((ref.copy(), sec.copy()))
        return np.zeros(1), np.zeros(1), 0.0

    rng = np.random.default_rng(0)
    for scene in bc.SCENES:
        bc.synthetic_cases(scene, data, False, {"capture": capture}, rng)
    # run_case makes one untimed call on the first pair of each case: drop the repeats
    out, seen = [], set()
    for ref, sec in pairs:
        key = (ref.shape, float(ref[0, 0]), float(sec[0, 0]), float(sec[-1, -1]))
        if key not in seen:
            seen.add(key)
            out.append((ref, sec))
    return out


def tio(ref, sec, workers):
    t0 = time.perf_counter()
    f = correlate_arrays(
        ref, sec, window=bc.WINDOW, step=bc.STEP, search=bc.SEARCH, workers=workers
    )
    return time.perf_counter() - t0, f


def pause_section(pairs, repeats):
    print("== 1. a pause before each call (windows/s over all pairs; back to back: best")
    print("   of the repeats)")
    n = sum(bc.grid_shape(r.shape)[0] * bc.grid_shape(r.shape)[1] for r, _ in pairs)
    for workers in (2, 1):
        for mode in ("back to back", "0.3 s sleep before", "scikit-image loop before"):
            if mode.startswith("scikit") and bc.skimage is None:
                continue
            best = np.inf
            for _ in range(repeats if mode == "back to back" else 1):
                total = 0.0
                for ref, sec in pairs:
                    if mode.startswith("0.3"):
                        time.sleep(0.3)
                    elif mode.startswith("scikit"):
                        bc.run_skimage(ref, sec)
                    total += tio(ref, sec, workers)[0]
                best = min(best, total)
            print(f"  {workers} thread(s), {mode:26s} {n / best:8.0f} windows/s")


_STARTED: list[ThreadPoolExecutor] = []


def _pool_per_call(threads):
    """A new pool on every call (threads started per call and shut down after it, as
    before the process-wide pool)."""
    pool = ThreadPoolExecutor(max_workers=max(1, int(threads)))
    _STARTED.append(pool)
    return pool


def _pool_map(fn, tasks, workers):
    """Every task handed to a pool of ``workers`` threads; the caller waits."""
    workers = max(1, int(workers))
    if workers == 1:
        return [fn(t) for t in tasks]
    pool = _c._thread_pool(workers)
    return list(pool.map(fn, tasks))


def paired_section(pairs, repeats):
    print("\n== 2. paired per-call comparisons, 2 threads (ratio of wall time variant / current)")
    current = (_c._thread_pool, _c._map_tasks)
    variants = {
        "a new thread pool per call": (_pool_per_call, current[1]),
        "tasks handed to the pool, caller waits": (current[0], _pool_map),
    }
    rng = np.random.default_rng(1)
    for name, (pool_fn, map_fn) in variants.items():
        t_cur, t_var = [], []
        for _ in range(repeats):
            for ref, sec in pairs:
                order = ("cur", "var") if rng.random() < 0.5 else ("var", "cur")
                for which in order:
                    if which == "var":
                        _c._thread_pool, _c._map_tasks = pool_fn, map_fn
                    dt, f = tio(ref, sec, 2)
                    _c._thread_pool, _c._map_tasks = current
                    while _STARTED:
                        _STARTED.pop().shutdown()
                    (t_var if which == "var" else t_cur).append(dt)
                    if which == "var":
                        fv = f
                    else:
                        fc = f
                np.testing.assert_array_equal(fv.dy, fc.dy)
        a, b = np.array(t_cur), np.array(t_var)
        print(
            f"  {name:40s} total {b.sum() / a.sum():.3f}, median per call "
            f"{np.median(b / a):.3f}, current faster in {np.mean(a < b):.0%} of {a.size} calls"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python benchmarks/bench_correlation_threads.py --repeats 2",
    )
    ap.add_argument("--repeats", type=int, default=3, help="passes over the pairs (default 3)")
    ap.add_argument("--data", default=None, help="the shared data folder (default: found)")
    args = ap.parse_args()
    data = bc.data_dir(args.data)
    t0 = time.perf_counter()
    pairs = small_crop_pairs(data)
    print(f"{len(pairs)} small-crop pairs built in {time.perf_counter() - t0:.0f} s")
    bc.warm_up()
    pause_section(pairs, args.repeats)
    paired_section(pairs, args.repeats)


if __name__ == "__main__":
    main()
