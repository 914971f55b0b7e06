"""Which defaults recover the displacement best? The whole chain on generated scenes.

Runs ``tio run`` (the real pipeline) on demo scenes with a known truth and compares
parameter sets that differ only in the correction and inversion stages (the pair
correlations are computed once per scene and reused, thanks to the pipeline's
stage keys):

* ``original``: the original ISTerre TIO choices that TIO keeps configurable: no
  neighbour outlier test, score threshold 0.2, one re-weighting pass, no temporal
  regularisation;
* ``tio``: TIO's defaults (median test on, score >= 0.4, three re-weighting passes
  whose outlier test uses the weak temporal regularisation);
* ``no regularisation``: the same without the regularisation;
* ``1 pass, no reg.``: one re-weighting pass without regularisation (TIO's defaults
  before the regularisation was added);
* ``plain LSQ``: TIO's corrections, then unweighted least squares without
  re-weighting (residual scale and outlier threshold set out of reach);
* ``successive only``: TIO's corrections, each date paired with the next one only
  (no redundancy).

Prints RMSE (metres, over all dates and output pixels, both components) on the
landslide and on stable ground, the share of pixels inverted, and each variant's
RMSE relative to TIO's defaults. Usage::

    python benchmarks/bench_defaults.py [--seeds 0 1 2] [--size 400] [--dates 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from tio.config import load_config
from tio.demo import compare_to_truth
from tio.pipeline import run
from tio.synthetic import make_scene

VARIANTS = {
    "original": {
        "correction.outlier_test": False,
        "correlation.min_score": 0.2,
        "inversion.reweight_iterations": 1,
        "inversion.regularisation": 0.0,
    },
    "tio": {},
    "no regularisation": {"inversion.regularisation": 0.0},
    "1 pass, no reg.": {"inversion.reweight_iterations": 1, "inversion.regularisation": 0.0},
    "plain LSQ": {
        "inversion.reweight_iterations": 0,
        "inversion.pair_weighting": "none",
        "inversion.gross_outlier": 1e6,
    },
    "successive only": {"pairs.max_next": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--dates", type=int, default=12)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    results: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            root = Path(tmp) / f"seed{seed}"
            scene = make_scene(
                root / "scenes", shape=(args.size, args.size), n_dates=args.dates, seed=seed
            )
            truth = scene.truth()
            for name, overrides in VARIANTS.items():
                cfg = load_config(
                    None,
                    {
                        "input.paths": [str(root / "scenes")],
                        "output.directory": str(
                            root / ("out_successive" if "pairs.max_next" in overrides else "out")
                        ),
                        "output.quicklooks": False,
                        **overrides,
                    },
                )
                result = run(cfg, progress=False)
                stats = compare_to_truth(result.timeseries, truth, cfg.correlation.window)
                stats["coverage"] = stats["n_pixels"] / (
                    result.timeseries.sizes["x"] * result.timeseries.sizes["y"]
                )
                results[name].append(stats)
    print(
        f"scenes: seeds {args.seeds}, {args.size} x {args.size} px, {args.dates} dates "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    print(
        f"{'variant':<16} {'RMSE slide (m)':>15} {'RMSE stable (m)':>16} {'inverted':>9} "
        f"{'slide/tio':>10} {'stable/tio':>11}"
    )
    ref_slide = np.mean([s["rmse_landslide"] for s in results["tio"]])
    ref_stable = np.mean([s["rmse_stable"] for s in results["tio"]])
    for name, runs in results.items():
        slide = np.mean([s["rmse_landslide"] for s in runs])
        stable = np.mean([s["rmse_stable"] for s in runs])
        cov = np.mean([s["coverage"] for s in runs])
        print(
            f"{name:<16} {slide:15.2f} {stable:16.2f} {100 * cov:8.1f}% "
            f"{slide / ref_slide:10.2f} {stable / ref_stable:11.2f}"
        )


if __name__ == "__main__":
    main()
