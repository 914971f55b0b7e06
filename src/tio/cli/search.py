"""``tio search``: Sentinel-2 scenes of a STAC catalogue over an area and dates."""

from __future__ import annotations

import click

from ._common import handle_errors, parse_bbox

EPILOG = """\b
Examples:
  tio search --aoi 6.80,45.90,6.90,45.95 --start 2023-06-01 --end 2023-09-30
      Earth Search (sentinel-2-l2a), products with at most 20 % cloud
  tio search --aoi area.geojson --start 2023-06-01 --end 2023-09-30 --max-cloud 50 \\
      --collection sentinel-2-l1c --orbit 108 --geojson scenes.geojson
      L1C products of one relative orbit, the table also written as GeoJSON
  tio search --aoi 6.80,45.90,6.90,45.95 --start 2023-06-01 --end 2023-06-30 --catalog cdse
      the Copernicus Data Space catalogue (downloads need CDSE_USERNAME/CDSE_PASSWORD)
  tio search ... --catalog https://my.stac.server/api/v1 --all
      any STAC API; --all also lists the items left out and why
  tio search ... --download --cache-dir s2cache/
      also fetch the kept scenes' band and SCL files (resumable, checksums verified)
\b
The same search is what `tio run --aoi ... --start ... --end ...` does when no
input files are given.
"""


@click.command("search", epilog=EPILOG)
@click.option(
    "--aoi",
    required=True,
    help="Area of interest: WEST,SOUTH,EAST,NORTH (degrees), GeoJSON file or WKT.",
)
@click.option("--start", required=True, help="First date (YYYY-MM-DD).")
@click.option("--end", required=True, help="Last date (YYYY-MM-DD).")
@click.option(
    "--max-cloud",
    default=20.0,
    show_default=True,
    type=click.FloatRange(0, 100),
    help="Largest cloud cover of a product, percent (catalogue metadata).",
)
@click.option(
    "--collection",
    default="sentinel-2-l2a",
    show_default=True,
    help="Collection: sentinel-2-l2a or sentinel-2-l1c.",
)
@click.option("--orbit", type=int, help="Relative orbit [default: the one covering most dates].")
@click.option(
    "--catalog",
    default="earth-search",
    show_default=True,
    help="earth-search, cdse, planetary-computer, or a STAC API URL.",
)
@click.option("--band", default="B04", show_default=True, help="Band whose asset is listed.")
@click.option(
    "--geojson", type=click.Path(dir_okay=False), help="Also write the items to this GeoJSON."
)
@click.option("-a", "--all", "show_all", is_flag=True, help="Also list items left out, and why.")
@click.option(
    "--download",
    is_flag=True,
    help="Download the kept scenes (band and SCL assets, or SAFE archives for cdse) into the "
    "cache, resumable and checked against the catalogue's checksums.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Cache folder for --download [default: input.cache_dir, ~/.cache/tio].",
)
@handle_errors
def search_cmd(
    aoi,
    start,
    end,
    max_cloud,
    collection,
    orbit,
    catalog,
    band,
    geojson,
    show_all,
    download,
    cache_dir,
):
    """List the scenes of a STAC catalogue over an area and dates (date, platform, tile, orbit,
    cloud cover, id), one per acquisition, of one relative orbit."""
    from tio.config import load_config

    cfg = load_config(
        None,
        {
            k: v
            for k, v in {
                "input.aoi": parse_bbox(aoi),
                "input.start": start,
                "input.end": end,
                "input.orbit": orbit,
                "input.band": band,
                "input.catalog": catalog,
                "input.collection": collection,
                "input.cache_dir": cache_dir,
            }.items()
            if v is not None
        },
    ).input
    from tio.catalog import search, write_geojson

    result = search(
        cfg.aoi,
        cfg.start,
        cfg.end,
        catalog=cfg.catalog,
        collection=cfg.collection,
        max_cloud=max_cloud,
        orbit=cfg.orbit,
        band=cfg.band,
    )
    click.echo(
        f"{'date':<10}  {'platform':<12} {'tile':<6} {'orbit':>5} {'cloud%':>6} {'area%':>5}  id"
    )
    for c in result.candidates:
        if not (c.kept or show_all):
            continue
        s = c.scene
        orb = "" if s.orbit is None else str(s.orbit)
        cloud = "" if s.cloud_cover is None else f"{s.cloud_cover:.1f}"
        line = (
            f"{s.date.isoformat():<10}  {s.sensor[:12]:<12} {s.tile:<6} {orb:>5} {cloud:>6} "
            f"{100 * c.coverage:>5.0f}  {s.source}"
        )
        click.echo(line if c.kept else f"{line}  (left out: {c.reason})")
    kept = sum(c.kept for c in result.candidates)
    orbit_txt = f", relative orbit {result.orbit}" if result.orbit is not None else ""
    click.echo(
        f"{kept} scene(s) kept of {len(result.candidates)} found in {result.url}{orbit_txt} "
        "(cloud%: whole product; area%: share of the area inside the tile)"
    )
    if geojson:
        write_geojson(result, geojson)
        click.echo(f"written {geojson}")
    if download:
        from tio.catalog import download as fetch
        from tio.download import Cache

        cache = Cache(cfg.cache_dir, int(cfg.cache_limit * 1e9))
        for path in fetch(result, cache, band=cfg.band):
            click.echo(f"in the cache: {path}")
