"""``tio run``: the whole chain on local images."""

from __future__ import annotations

import click

from ._common import collect_overrides, handle_errors, input_flags, input_options

EPILOG = """\b
Examples:
  tio run scenes/ -o out/
      every dated image in scenes/ (GeoTIFF, JPEG 2000, SAFE), defaults for the rest
  tio run S2*_MSIL1C_*.SAFE --aoi 6.80,45.90,6.90,45.95 --start 2020-01-01 -o out/
      a lon/lat area of a set of Sentinel-2 products, from a date on
  tio run scenes/ --config tio.toml --set inversion.residual_scale=3 -o out/
      parameters from a file, one overridden
  tio run glacier_jpegs/ --pixel-units --window 64 -o out/
      a series of images without georeferencing (dates in the file names)
  tio run --aoi 6.80,45.90,6.90,45.95 --start 2023-06-01 --end 2023-09-30 -o out/
      no files: search Earth Search (sentinel-2-l2a) and read only the area over HTTP
  tio run --aoi 6.80,45.90,6.90,45.95 --start 2023-06-01 --end 2023-09-30 \\
      --catalog cdse --collection sentinel-2-l1c -o out/
      Copernicus Data Space: SAFE archives downloaded into the cache (input.cache_dir)
  tio run scenes/ --workers 2 --memory-limit 8GB -o out/
      on a local Dask cluster of 2 worker processes of at most 8 GB each
  tio run scenes/ --scheduler tcp://10.0.0.5:8786 -o /shared/out/
      on the workers of an existing Dask cluster (they must see /shared/out)
\b
Running it again with the same output folder skips finished stages.
"""


@click.command("run", epilog=EPILOG)
@input_options
@click.option("-o", "--output", help="Output folder [default: tio-output].")
@click.option(
    "--catalog",
    help="Without input files: STAC catalogue searched (earth-search, cdse, "
    "planetary-computer or a URL) [default: earth-search].",
)
@click.option("--collection", help="Catalogue collection [default: sentinel-2-l2a].")
@click.option("--orbit", type=int, help="Keep only this Sentinel-2 relative orbit.")
@click.option(
    "--pairs-per-date", type=int, help="Pair each date with this many next dates [default: 4]."
)
@click.option("--window", type=int, help="Correlation window, pixels [default: 32].")
@click.option("--step", type=int, help="Output grid spacing, pixels [default: 8].")
@click.option("--search", type=int, help="Search range, pixels [default: 8].")
@click.option(
    "--max-cloud",
    type=float,
    help="Drop dates with more cloud/no data than this share [default: 0.5].",
)
@click.option(
    "--pixel-units",
    is_flag=True,
    default=None,
    help="Accept images without georeferencing (results in pixels).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Address of a running Dask scheduler (tcp://host:8786), or 'synchronous' to run "
    "every task in this process [default: a local Dask cluster].",
)
@click.option(
    "--workers", type=int, help="Worker processes of the local cluster [default: one per core]."
)
@click.option(
    "--memory-limit",
    metavar="SIZE",
    help="Memory limit per local worker, e.g. 4GB [default: memory / workers].",
)
@click.option("--no-quicklooks", is_flag=True, default=None, help="Do not draw PNG quicklooks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or log lines on the terminal.")
@click.option("-v", "--verbose", is_flag=True, help="More detail in the log.")
@handle_errors
def run_cmd(
    inputs,
    output,
    config_file,
    sets,
    aoi,
    start,
    end,
    band,
    catalog,
    collection,
    orbit,
    pairs_per_date,
    window,
    step,
    search,
    max_cloud,
    pixel_units,
    scheduler,
    workers,
    memory_limit,
    no_quicklooks,
    quiet,
    verbose,
):
    """Correlate, correct and invert a stack of dated images into a displacement time series."""
    from tio.config import load_config
    from tio.pipeline import run

    flags = {
        **input_flags(inputs, aoi, start, end, band),
        "output.directory": output,
        "input.catalog": catalog,
        "input.collection": collection,
        "input.orbit": orbit,
        "pairs.max_next": pairs_per_date,
        "correlation.window": window,
        "correlation.step": step,
        "correlation.search": search,
        "input.max_cloud": max_cloud,
        "input.pixel_units": pixel_units,
        "output.quicklooks": False if no_quicklooks else None,
        "compute.scheduler": scheduler,
        "compute.workers": workers,
        "compute.memory_limit": memory_limit,
    }
    config = load_config(config_file, collect_overrides(sets, flags))
    result = run(config, progress=not quiet, verbose=verbose)
    click.echo(f"products in {result.out_dir.resolve()}")
