"""``tio scenes``: what TIO finds in the inputs, and what it would keep."""

from __future__ import annotations

import click

from ._common import handle_errors, parse_bbox

EPILOG = """\b
Examples:
  tio scenes downloads/                       every product or image found, with its date
  tio scenes S2*.SAFE --aoi 6.80,45.90,6.90,45.95 --band B04
      with the share of cloud / no data over the area, and which dates a run would drop
"""


@click.command("scenes", epilog=EPILOG)
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--aoi", help="Area of interest: WEST,SOUTH,EAST,NORTH (degrees), GeoJSON file or WKT."
)
@click.option("--band", default="B04", show_default=True, help="Band of SAFE products.")
@click.option("--start", help="First date kept (YYYY-MM-DD).")
@click.option("--end", help="Last date kept (YYYY-MM-DD).")
@click.option("--orbit", type=int, help="Keep only this Sentinel-2 relative orbit.")
@click.option(
    "--max-cloud",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of cloud / no data over the area above which a date is dropped.",
)
@click.option("--no-area", is_flag=True, help="Do not read pixels: metadata only (fast).")
@handle_errors
def scenes_cmd(inputs, aoi, band, start, end, orbit, max_cloud, no_area):
    """List the scenes found in INPUTS: date, sensor, tile, orbit, cloud, kept or why not."""
    from tio.config import load_config
    from tio.stack import survey_area

    cfg = load_config(
        None,
        {
            k: v
            for k, v in {
                "input.paths": list(inputs),
                "input.aoi": parse_bbox(aoi),
                "input.band": band,
                "input.start": start,
                "input.end": end,
                "input.orbit": orbit,
                "input.max_cloud": max_cloud,
            }.items()
            if v is not None
        },
    ).input
    rows = survey_area(cfg, read_pixels=not no_area)
    header = (
        f"{'date':<10}  {'sensor':<12} {'tile':<6} {'orbit':>5} {'cloud%':>6} {'area%':>6}  status"
    )
    click.echo(header)
    for r in rows:
        date = r["date"] or "?"
        orbit = "" if r["orbit"] is None else str(r["orbit"])
        cloud = "" if r["cloud_cover"] is None else f"{r['cloud_cover']:.0f}"
        area = "" if r["unusable"] is None else f"{100 * r['unusable']:.0f}"
        status = "kept" if r["kept"] else f"dropped: {r['reason']}"
        click.echo(
            f"{date:<10}  {r['sensor'][:12]:<12} {r['tile']:<6} {orbit:>5} {cloud:>6} {area:>6}  "
            f"{status}  {r['source']}"
        )
    kept = sum(r["kept"] for r in rows)
    click.echo(
        f"{kept} of {len(rows)} inputs kept "
        "(cloud%: product metadata; area%: cloud or no data over the area)"
    )
