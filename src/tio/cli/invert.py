"""``tio invert``: pair maps -> displacement time series (the inversion alone)."""

from __future__ import annotations

import click

from ._common import collect_overrides, handle_errors

EPILOG = """\b
Examples:
  tio invert pairs/*.tif -o series/
      every pair map of tio correlate; dates from their TIO_DATE1/TIO_DATE2 tags
      or from YYYYMMDD_YYYYMMDD (or YYYY-MM-DD_YYYY-MM-DD) in the file names
  tio invert out/pairs/corrected/ -o series/ --regularisation-mode solve
      a folder of pair maps, a regularised (smoother) result
  tio invert pairs/*.tif -o series/ --baseline-weighting short --score-weighting
      favour short temporal baselines and well-correlated values
  tio invert pairs/*.tif -o series/ --smoothing-gamma2 0
      no smoothing: dates a pixel's pairs do not connect stay empty
\b
Writes cumulative_ew.tif, cumulative_ns.tif (one band per date, first date 0, m),
their 1-sigma (cumulative_*_sigma.tif), velocity.tif (EW, NS, magnitude and
1-sigma, m/year), rms_date_*.tif, rms_pair.csv, n_pairs.tif, smoothed.tif and
timeseries.nc (all of it, with the residual of every pair).
"""


def _expand(paths):
    from pathlib import Path

    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(path.glob("*.tif")))
        else:
            out.append(path)
    return out


@click.command("invert", epilog=EPILOG)
@click.argument("pairs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder.")
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML or YAML file; its [inversion] section is used (see `tio config`).",
)
@click.option(
    "--set", "sets", multiple=True, metavar="inversion.NAME=VALUE", help="Override; repeatable."
)
@click.option("--residual-scale", type=float, help="s of w = 1/(s^2 + r^2), m [default: 2].")
@click.option("--gross-outlier", type=float, help="Zero weight above this residual, m [5].")
@click.option("--reweight-iterations", type=int, help="Re-weighting passes [default: 3].")
@click.option("--smoothing-gamma2", type=float, help="Smoothing weight, gaps only [0.003].")
@click.option("--regularisation", type=float, help="Temporal regularisation weight, 0 off [0.1].")
@click.option(
    "--regularisation-mode",
    type=click.Choice(["outliers", "solve"]),
    help="Regularise only the outlier search, or the result too [outliers].",
)
@click.option(
    "--joint-outliers/--separate-outliers",
    default=None,
    help="Weight and reject each pair from the larger of its EW and NS residuals (a wrong "
    "match is wrong in both), or each component on its own (as NSBAS) [joint].",
)
@click.option("--min-valid-fraction", type=float, help="Share of valid pairs needed [0.3].")
@click.option(
    "--pair-weighting",
    type=click.Choice(["residual", "std", "none"]),
    help="A priori pair weights: residual (each pair's noise measured on the residuals of a "
    "first inversion), std (each map's spread) or none [residual].",
)
@click.option(
    "--baseline-weighting",
    type=click.Choice(["none", "short", "long"]),
    help="Weights from the temporal baseline [none].",
)
@click.option(
    "--score-weighting/--no-score-weighting",
    default=None,
    help="Multiply weights by the correlation score [no].",
)
@click.option("--workers", type=click.IntRange(1, 256), help="Threads [default: all cores].")
@click.option("--no-netcdf", is_flag=True, help="Do not write timeseries.nc.")
@handle_errors
def invert_cmd(
    pairs,
    output,
    config_file,
    sets,
    residual_scale,
    gross_outlier,
    reweight_iterations,
    smoothing_gamma2,
    regularisation,
    regularisation_mode,
    joint_outliers,
    min_valid_fraction,
    pair_weighting,
    baseline_weighting,
    score_weighting,
    workers,
    no_netcdf,
):
    """Invert PAIRS (tio correlate maps: EW, NS, score) into displacement time series."""
    import sys
    import time

    import numpy as np
    from tqdm import tqdm

    from tio import __version__
    from tio.config import load_config
    from tio.errors import ConfigError
    from tio.inversion import invert
    from tio.products import write_products
    from tio.raster import read_pair_stack

    flags = {
        "inversion.residual_scale": residual_scale,
        "inversion.gross_outlier": gross_outlier,
        "inversion.reweight_iterations": reweight_iterations,
        "inversion.smoothing_gamma2": smoothing_gamma2,
        "inversion.regularisation": regularisation,
        "inversion.regularisation_mode": regularisation_mode,
        "inversion.joint_outliers": joint_outliers,
        "inversion.min_valid_fraction": min_valid_fraction,
        "inversion.pair_weighting": pair_weighting,
        "inversion.baseline_weighting": baseline_weighting,
        "inversion.score_weighting": score_weighting,
    }
    overrides = collect_overrides(sets, flags)
    other = sorted(k for k in overrides if not k.startswith("inversion."))
    if other:
        raise ConfigError(f"tio invert takes only inversion.* parameters, got {', '.join(other)}")
    config = load_config(config_file, overrides).inversion
    files = _expand(pairs)
    started = time.monotonic()
    cube = read_pair_stack(files)
    n_dates = np.unique(np.concatenate([cube["date1"].values, cube["date2"].values])).size
    click.echo(
        f"{len(files)} pairs, {n_dates} dates, {cube.sizes['x']} x {cube.sizes['y']} values",
        err=True,
    )
    with tqdm(
        total=cube.sizes["y"], unit="row", desc="invert", disable=not sys.stderr.isatty()
    ) as bar:
        ts = invert(cube, **config.model_dump(), workers=workers, progress=bar.update)
    ts.attrs.update(units=cube.attrs.get("units", "m"), tio_version=__version__)
    ts.attrs["inputs"] = "\n".join(str(f) for f in files)
    written = write_products(ts, output, netcdf=not no_netcdf)
    inverted = np.isfinite(ts["cumulative_ew"].values).any(axis=0)
    units = ts.attrs["units"]
    last = ts["cumulative_ew"].values[-1], ts["cumulative_ns"].values[-1]
    with np.errstate(all="ignore"):
        msg = (
            f"{output}: {len(written)} files; {int(inverted.sum())} of {inverted.size} pixels "
            f"inverted, {int(ts['smoothed'].values.any(axis=0).sum())} with dates tied by "
            f"smoothing; median at the last date EW {np.nanmedian(last[0]):+.2f} {units}, "
            f"NS {np.nanmedian(last[1]):+.2f} {units} ({time.monotonic() - started:.1f} s)"
        )
    click.echo(msg)
