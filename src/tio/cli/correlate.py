"""``tio correlate``: sub-pixel offsets between two images, as a 3-band GeoTIFF."""

from __future__ import annotations

import click

from ._common import handle_errors, parse_bbox

EPILOG = """\b
Examples:
  tio correlate ref_20200101.tif sec_20200201.tif -o pair.tif
      EW (m, + east), NS (m, + north) and score every 8 pixels
  tio correlate S2A_MSIL1C_2020...SAFE S2B_MSIL1C_2020...SAFE --band B04 \\
      --aoi 6.80,45.90,6.90,45.95 -o pair.tif
      two Sentinel-2 products, only an area of interest
  tio correlate a.jp2 b.jp2 --window 64 --search 16 --mask clouds_b.tif -o pair.tif
      larger windows and search range, cloud mask of the secondary
  tio correlate glacier_2020.tif glacier_2021.tif --levels 3 --prefilter wallis -o pair.tif
      motion much larger than the search range (coarse to fine), strong illumination change
\b
Images without georeferencing give offsets in pixels (tag TIO_UNITS=pixel).
"""


def _dates(text):
    if text is None:
        return None
    import datetime as dt

    from tio.errors import ConfigError

    try:
        a, b = (dt.date.fromisoformat(t.strip()) for t in text.split(","))
    except ValueError:
        raise ConfigError(
            f"invalid value for --dates: {text!r}: give two ISO dates DATE1,DATE2"
        ) from None
    return a, b


@click.command("correlate", epilog=EPILOG)
@click.argument("reference", type=click.Path())
@click.argument("secondary", type=click.Path())
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="GeoTIFF to write."
)
@click.option(
    "--window",
    default=32,
    show_default=True,
    type=click.IntRange(8, 512),
    help="Window size, pixels.",
)
@click.option(
    "--step",
    default=8,
    show_default=True,
    type=click.IntRange(1, 512),
    help="Output spacing, pixels.",
)
@click.option(
    "--search",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Search range, pixels.",
)
@click.option("--band", default="B04", show_default=True, help="Band of SAFE products.")
@click.option(
    "--prefilter",
    default="none",
    show_default=True,
    type=click.Choice(["none", "highpass", "wallis"]),
    help="Filter both images first.",
)
@click.option(
    "--mask",
    "sec_mask",
    type=click.Path(),
    help="Mask raster of the secondary (non-zero = unusable).",
)
@click.option(
    "--reference-mask", "ref_mask", type=click.Path(), help="Mask raster of the reference."
)
@click.option(
    "--levels",
    default=0,
    show_default=True,
    type=click.IntRange(0, 6),
    help="Coarse-to-fine levels, for displacements larger than --search.",
)
@click.option(
    "--deform",
    default=1,
    show_default=True,
    type=click.IntRange(0, 4),
    help="Window-deformation passes: strained windows are measured again on the deformed "
    "secondary (0: off).",
)
@click.option("--dates", help="DATE1,DATE2 (ISO) when the files do not say.")
@click.option(
    "--aoi",
    help="Only this area of the reference: WEST,SOUTH,EAST,NORTH (degrees), a GeoJSON file or WKT.",
)
@click.option(
    "--resampling",
    default="cubic",
    show_default=True,
    type=click.Choice(["cubic", "cubic_spline", "lanczos", "bilinear"]),
    help="Resampler for a secondary on another grid.",
)
@handle_errors
def correlate_cmd(
    reference,
    secondary,
    output,
    window,
    step,
    search,
    band,
    prefilter,
    sec_mask,
    ref_mask,
    levels,
    deform,
    dates,
    aoi,
    resampling,
):
    """Measure the displacement of SECONDARY relative to REFERENCE, window by window."""
    import logging

    import numpy as np

    from tio.correlate_files import correlate_files

    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    result = correlate_files(
        reference,
        secondary,
        output,
        band=band,
        window=window,
        step=step,
        search=search,
        prefilter=prefilter,
        reference_mask=ref_mask,
        secondary_mask=sec_mask,
        dates=_dates(dates),
        aoi=parse_bbox(aoi),
        resampling=resampling,
        levels=levels,
        deform=deform,
    )
    ds = result.dataset
    valid = float(np.isfinite(ds["ew"].values).mean())
    units = ds.attrs.get("units", "m")
    click.echo(
        f"{result.path}: {ds.sizes['x']} x {ds.sizes['y']} values, {100 * valid:.0f} % matched, "
        f"median EW {np.nanmedian(ds['ew'].values):+.2f} {units}, "
        f"NS {np.nanmedian(ds['ns'].values):+.2f} {units}"
    )
