"""``tio demo``: a generated scene with a known landslide, through the real pipeline.

:func:`run_demo` generates a scene with :func:`tio.synthetic.make_scene` (dated
GeoTIFFs and the true displacement), runs :func:`tio.pipeline.run` on it with
the default configuration, exactly as ``tio run`` would, and measures the error
of the recovered cumulative displacement against the truth with
:func:`compare_to_truth`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.ndimage import uniform_filter

__all__ = ["DemoReport", "compare_to_truth", "run_demo"]


@dataclass(frozen=True)
class DemoReport:
    """Root-mean-square errors (metres) of the cumulative displacement at every date."""

    rmse_ew: float
    rmse_ns: float
    rmse_landslide: float
    rmse_stable: float
    max_truth: float
    max_error_last_date: float
    n_pixels: int
    n_dates: int
    out_dir: Path

    def lines(self) -> list[str]:
        return [
            f"Error of the recovered cumulative displacement against the truth "
            f"({self.n_dates} dates, {self.n_pixels} output pixels):",
            f"  RMSE east-west, all dates, whole area     {self.rmse_ew:6.2f} m",
            f"  RMSE north-south, all dates, whole area   {self.rmse_ns:6.2f} m",
            f"  RMSE (both components) on the landslide   {self.rmse_landslide:6.2f} m",
            f"  RMSE (both components) on stable ground   {self.rmse_stable:6.2f} m",
            f"  largest true displacement                 {self.max_truth:6.2f} m",
            f"  95th percentile of |error| at last date   {self.max_error_last_date:6.2f} m",
        ]


def compare_to_truth(ts: xr.Dataset, truth: xr.Dataset, window: int) -> dict:
    """Compare inverted cumulative displacement with the truth.

    The correlator measures the mean motion of a ``window`` x ``window`` patch, so
    the truth is averaged over the same window before it is interpolated at the
    output pixel centres. Pixels that were not inverted are left out.
    """
    out = {}
    errs = {}
    mask = truth["landslide_mask"].astype("float32")
    mask_s = xr.DataArray(uniform_filter(mask.values, window), coords=mask.coords, dims=mask.dims)
    on_slide = mask_s.interp(x=ts["x"], y=ts["y"]).values > 0.05
    for comp in ("ew", "ns"):
        t = truth[f"cumulative_{comp}"]
        sm = xr.DataArray(
            uniform_filter(t.values, size=(1, window, window), mode="nearest"),
            coords=t.coords,
            dims=t.dims,
        )
        ref = sm.interp(x=ts["x"], y=ts["y"]).values
        errs[comp] = ts[f"cumulative_{comp}"].values - ref
        out[f"rmse_{comp}"] = float(np.sqrt(np.nanmean(errs[comp] ** 2)))
    both = np.hypot(errs["ew"], errs["ns"])
    sq = both**2
    out["rmse_landslide"] = float(np.sqrt(np.nanmean(sq[:, on_slide])))
    out["rmse_stable"] = float(np.sqrt(np.nanmean(sq[:, ~on_slide])))
    out["max_error_last_date"] = float(np.nanpercentile(both[-1], 95))
    out["max_truth"] = float(np.hypot(truth["cumulative_ew"], truth["cumulative_ns"]).max())
    out["n_pixels"] = int(np.isfinite(ts["cumulative_ew"].values[-1]).sum())
    out["n_dates"] = int(ts.sizes["time"])
    return out


def run_demo(
    out_dir: str | Path = "tio-demo",
    *,
    shape: tuple[int, int] = (400, 400),
    n_dates: int = 12,
    seed: int = 0,
    progress: bool = True,
    overrides: dict | None = None,
) -> DemoReport:
    """Generate a scene into ``out_dir/scenes``, process it into ``out_dir/output``."""
    from .config import load_config
    from .pipeline import run
    from .synthetic import make_scene

    out = Path(out_dir)
    scene = make_scene(out / "scenes", shape=shape, n_dates=n_dates, seed=seed)
    config = load_config(
        None,
        {
            "input.paths": [str(out / "scenes")],
            "output.directory": str(out / "output"),
            **(overrides or {}),
        },
    )
    result = run(config, progress=progress)
    with scene.truth() as truth:
        stats = compare_to_truth(result.timeseries, truth.load(), config.correlation.window)
    report = DemoReport(out_dir=out / "output", **stats)
    (out / "output" / "demo_error.txt").write_text("\n".join(report.lines()) + "\n")
    return report
