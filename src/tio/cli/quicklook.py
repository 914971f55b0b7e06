"""``tio quicklook``: re-render the pictures, animation, overlays and report of a run."""

from __future__ import annotations

import click

from ._common import handle_errors

EPILOG = """\b
Examples:
  tio quicklook tio-output/                      redraw everything from the products
  tio quicklook out/ --points sites.csv          add time series at points (lon,lat columns)
  tio quicklook out/ --animation gif             a GIF instead of the animated PNG
"""


@click.command("quicklook", epilog=EPILOG)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--points",
    type=click.Path(dir_okay=False, path_type=str),
    help="CSV (lon,lat or x,y columns, optional name) or GeoJSON of points.",
)
@click.option(
    "--animation",
    type=click.Choice(["apng", "gif", "mp4"]),
    default="apng",
    show_default=True,
    help="Format of the animation (mp4 needs ffmpeg).",
)
@handle_errors
def quicklook_cmd(run_dir, points, animation):
    """Draw the quicklooks, the animation, the EPSG:4326 map overlays, the time series at
    points, the STAC catalog and the HTML report of a finished run, from its products
    (timeseries.nc, stack.zarr, pairs/corrected/) without recomputing anything."""
    from tio.present import render_run

    written = render_run(
        run_dir,
        points=points,
        animation=animation,
        step=lambda name: click.echo(f"drawing {name}", err=True),
    )
    for path in written:
        click.echo(str(path))
