"""Whitening of the cross-power spectrum: square root for every window, or following the score?

TIO's sub-pixel estimator divides the cross-power spectrum of each window by a power
of its modulus (:func:`tio._correlation.whitening`). It is 0.5 (the square root) for
every window. For a while it followed the window's ZNCC peak instead: 0.5 for a
score of 1, falling to 0 (plain cross-correlation, the matched filter for white
noise) at 0.95 and below. That rule gained a little on the white-noise cases of
``bench_correlation.py`` and was made the default; bisecting a regression of
``tio demo`` found it. This script compares the two rules in one run, on three
kinds of evidence (the alternative rule is installed by replacing
``tio._correlation.whitening`` in this process; everything else is TIO's defaults):

1. ``tio demo`` scenes (generated, truth known; crops and seasons change between
   dates): the whole chain, ``tio run``'s code in this process (``compute.scheduler
   = "synchronous"``), RMSE of the cumulative displacement on stable ground and on
   the landslide, for each seed given;
2. the real Sentinel-2 pair of the shared data (``sentinel2_l1c_pair_T33UUU``, 10 days
   apart in spring): on clear ground the true offset field is the misregistration, a
   near-uniform translation, so the spread (1.4826 MAD) of the per-window offsets
   around their median measures the error of single windows on real imagery; the
   median is compared with a global phase correlation of a 1024 x 1024 clear block
   (scikit-image, upsampling 100);
3. triplets of the real Perito Moreno glacier images (8-bit JPEG, no truth): the
   closure ``d(a, c) - d(a, b) - d(b, c)`` of the offsets, over windows valid in all
   three. Closure measures noise, not bias (a bias common to the three pairs, such as
   a pull towards zero, cancels), so it is printed as a secondary figure.

Usage::

    python benchmarks/bench_whitening.py [--seeds 0 3] [--data DIR]

About 4 minutes on 2 cores (two demo runs per seed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import tio._correlation as _c

S2_DIR = "sentinel2_l1c_pair_T33UUU"
S2_REF = f"{S2_DIR}/ref_S2A_20160608T153121_T33UUU_sub.jp2"
S2_TGT = f"{S2_DIR}/tgt_S2A_20160529T153631_T33UUU_sub.jp2"
GLACIER = "perito_moreno_glacier"
TRIPLETS = [
    ("20200116", "20200121", "20200126"),
    ("20200205", "20200207", "20200210"),
    ("20200220", "20200222", "20200227"),
    ("20200311", "20200313", "20200316"),
]
_SQRT = _c.whitening


def _score_following(score, k):
    """The rule that was dropped: 0.5 at a ZNCC peak of 1, 0 at 0.95 and below."""
    if score is None:
        return np.full(k, 0.5)
    sc = np.nan_to_num(np.asarray(score, np.float64), nan=1.0)
    return 0.5 * np.clip((sc - 0.95) / 0.05, 0.0, 1.0)


RULES = {"square root (TIO)": _SQRT, "score-following": _score_following}


def demo(seed: int) -> dict:
    from tio.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        r = run_demo(
            Path(tmp) / "demo",
            seed=seed,
            progress=False,
            overrides={"compute.scheduler": "synchronous"},
        )
    return {"stable": r.rmse_stable, "landslide": r.rmse_landslide}


def _common_windows(r, t):
    """Windows of the reference ``r`` and secondary ``t`` on their common extent."""
    from rasterio.windows import from_bounds

    b, c = r.bounds, t.bounds
    box = max(b.left, c.left), max(b.bottom, c.bottom), min(b.right, c.right), min(b.top, c.top)
    wr = from_bounds(*box, r.transform).round_offsets().round_lengths()
    wt = from_bounds(*box, t.transform).round_offsets().round_lengths()
    return wr, wt


def s2_pair(data: Path) -> dict:
    import rasterio
    from scipy import ndimage

    from tio.correlation import correlate_arrays

    with rasterio.open(data / S2_REF) as r, rasterio.open(data / S2_TGT) as t:
        wr, wt = _common_windows(r, t)
        ref = r.read(1, window=wr).astype(np.float32)
        sec = t.read(1, window=wt).astype(np.float32)
        pixel = r.res[0]
    nod = (ref == 0) | (sec == 0)
    ref[ref == 0] = np.nan
    sec[sec == 0] = np.nan
    bright = sec > np.nanpercentile(ref, 98)
    cloud = ndimage.binary_dilation(bright, structure=np.ones((31, 31), bool))
    f = correlate_arrays(ref, sec, window=32, step=16, search=8)
    # windows with no cloud within 15 px and no nodata, score >= 0.5
    bad = ndimage.uniform_filter((nod | cloud).astype(np.float32), 32, mode="nearest") > 0
    rows = (f.row0 + f.step * np.arange(f.dx.shape[0])).round().astype(int)
    cols = (f.col0 + f.step * np.arange(f.dx.shape[1])).round().astype(int)
    clear = ~bad[np.ix_(rows, cols)] & (f.score >= 0.5)
    ew, ns = f.dx[clear] * pixel, -f.dy[clear] * pixel
    out = {"windows": int(clear.sum())}
    for name, v in (("ew", ew), ("ns", ns)):
        out[name] = float(np.median(v))
        out[f"nmad_{name}"] = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    return out


def s2_global(data: Path) -> tuple[float, float]:
    """Global phase correlation of a 1024 x 1024 clear block (rule-independent)."""
    import rasterio
    from rasterio.windows import Window
    from skimage.registration import phase_cross_correlation

    with rasterio.open(data / S2_REF) as r, rasterio.open(data / S2_TGT) as t:
        wr, wt = _common_windows(r, t)
        # the clear block bench_correlation.py finds: row 1248, col 608 of the common extent
        ref = r.read(1, window=Window(wr.col_off + 608, wr.row_off + 1248, 1024, 1024))
        sec = t.read(1, window=Window(wt.col_off + 608, wt.row_off + 1248, 1024, 1024))
        pixel = r.res[0]
    shift, _, _ = phase_cross_correlation(
        ref.astype(np.float64), sec.astype(np.float64), upsample_factor=100
    )
    # skimage returns the shift registering the secondary onto the reference
    return float(-shift[1] * pixel), float(shift[0] * pixel)


def closure(data: Path) -> np.ndarray:
    from PIL import Image

    from tio.correlation import correlate_arrays

    def load(d):
        return np.asarray(Image.open(data / GLACIER / f"{d}.jpg").convert("L"), np.float32)

    errs = []
    for a, b, c in TRIPLETS:
        ia, ib, ic = load(a), load(b), load(c)
        ab, bc, ac = (
            correlate_arrays(x, y, window=32, step=16, search=8)
            for x, y in ((ia, ib), (ib, ic), (ia, ic))
        )
        cx, cy = ac.dx - ab.dx - bc.dx, ac.dy - ab.dy - bc.dy
        ok = np.isfinite(cx) & np.isfinite(cy)
        errs.append(np.hypot(cx[ok], cy[ok]))
    return np.concatenate(errs)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 3], help="tio demo seeds")
    ap.add_argument(
        "--data", help="shared data folder (default $TIO_SHARED_DATA or ../shared/data)"
    )
    args = ap.parse_args()
    here = Path(__file__).resolve().parent.parent
    data = Path(args.data or os.environ.get("TIO_SHARED_DATA") or here.parent / "shared" / "data")
    if not (data / S2_REF).is_file():
        sys.exit(f"error: shared data not found in {data} (set --data or TIO_SHARED_DATA)")

    gew, gns = s2_global(data)
    res = {}
    for name, rule in RULES.items():
        _c.whitening = rule
        try:
            res[name] = {
                "demo": {s: demo(s) for s in args.seeds},
                "s2": s2_pair(data),
                "closure": closure(data),
            }
        finally:
            _c.whitening = _SQRT

    print("== 1. tio demo (truth known): RMSE of the cumulative displacement, m")
    for name, r in res.items():
        cells = ", ".join(
            f"seed {s}: stable {v['stable']:.2f}, landslide {v['landslide']:.2f}"
            for s, v in r["demo"].items()
        )
        print(f"  {name:18s} {cells}")
    print(
        "\n== 2. real Sentinel-2 pair, clear ground, score >= 0.5: median offset (m) and "
        f"spread of single windows (1.4826 MAD, m); global phase correlation of a clear "
        f"block: ew {gew:+.2f}, ns {gns:+.2f}"
    )
    for name, r in res.items():
        s = r["s2"]
        print(
            f"  {name:18s} {s['windows']} windows: median ew {s['ew']:+.2f} ns {s['ns']:+.2f} "
            f"(minus global {s['ew'] - gew:+.2f} / {s['ns'] - gns:+.2f}); spread "
            f"{s['nmad_ew']:.2f} / {s['nmad_ns']:.2f}"
        )
    print("\n== 3. Perito Moreno triplets (no truth): closure |d(a,c) - d(a,b) - d(b,c)|, px")
    for name, r in res.items():
        e = r["closure"]
        print(
            f"  {name:18s} {e.size} windows: median {np.median(e):.3f}, 90th percentile "
            f"{np.quantile(e, 0.9):.3f}, share > 0.5 px {np.mean(e > 0.5):.3f}"
        )


if __name__ == "__main__":
    main()
