"""``tio pairs``: the pair network a configuration would give, before any correlation."""

from __future__ import annotations

import click

from ._common import collect_overrides, handle_errors, input_flags, input_options

EPILOG = """\b
Examples:
  tio pairs scenes/
      the dates a run would keep and the pairs it would correlate (defaults)
  tio pairs scenes/ --config tio.toml --plot network.png
      the network of a configuration file, drawn to a picture
  tio pairs S2*.SAFE --aoi 6.80,45.90,6.90,45.95 --max-days 60 --seasonal-days 20
      pairs at most 60 days apart, plus pairs across years in the same season
  tio pairs scenes/ --no-area --pairs-per-date 2
      from metadata only (dates a run would drop as cloudy are not known then)
"""


@click.command("pairs", epilog=EPILOG)
@input_options
@click.option("--orbit", type=int, help="Keep only this Sentinel-2 relative orbit.")
@click.option("--max-cloud", type=float, help="Drop dates with more cloud/no data than this share.")
@click.option(
    "--pairs-per-date", type=int, help="Pair each date with this many next dates [default: 4]."
)
@click.option("--min-days", type=int, help="Shortest temporal baseline (days).")
@click.option("--max-days", type=int, help="Longest temporal baseline (days).")
@click.option(
    "--seasonal-days", type=int, help="Also pair other years' dates within this many days of year."
)
@click.option("--max-per-date", type=int, help="At most this many pairs through one date.")
@click.option(
    "--no-area", is_flag=True, help="Do not read pixels: dates from metadata only (fast)."
)
@click.option(
    "--plot", type=click.Path(dir_okay=False), help="Also draw the network to this PNG file."
)
@click.option("--list", "list_pairs", is_flag=True, help="Also list every pair.")
@handle_errors
def pairs_cmd(
    inputs,
    config_file,
    sets,
    aoi,
    start,
    end,
    band,
    orbit,
    max_cloud,
    pairs_per_date,
    min_days,
    max_days,
    seasonal_days,
    max_per_date,
    no_area,
    plot,
    list_pairs,
):
    """Print the pair network that `tio run` would correlate with the same inputs and options.

    Dates are those a run would keep: found in INPUTS (or the configuration's
    input.paths), within the dates and orbit asked, and, unless --no-area, not too
    cloudy over the area. Nothing is written except the --plot picture.
    """
    from tio.config import load_config
    from tio.errors import InputError
    from tio.network import describe_network, plot_network, select_pairs
    from tio.stack import survey_area

    flags = {
        **input_flags(inputs, aoi, start, end, band),
        "input.orbit": orbit,
        "input.max_cloud": max_cloud,
        "pairs.max_next": pairs_per_date,
        "pairs.min_days": min_days,
        "pairs.max_days": max_days,
        "pairs.seasonal_days": seasonal_days,
        "pairs.max_per_date": max_per_date,
    }
    config = load_config(config_file, collect_overrides(sets, flags))
    if not config.input.paths:
        raise InputError("no input given: pass image files, folders or SAFE products")
    rows = survey_area(config.input, read_pixels=not no_area)
    kept = sorted({r["date"] for r in rows if r["kept"] and r["date"]})
    for r in rows:
        if not r["kept"]:
            click.echo(f"dropped {r['date'] or '?'}: {r['reason']}  ({r['source']})")
    import datetime as dt

    dates = [dt.date.fromisoformat(d) for d in kept]
    pairs = select_pairs(dates, **config.pairs.model_dump())
    report = describe_network(dates, pairs)
    for line in report.lines():
        click.echo(line)
    if list_pairs:
        click.echo("pairs:")
        for p in pairs:
            click.echo(f"  {p.name}  {p.days:4d} days")
    if plot:
        click.echo(f"network drawn to {plot_network(report, plot)}")
