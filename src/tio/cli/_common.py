"""Helpers shared by the commands: error reporting and configuration flags."""

from __future__ import annotations

import functools
import sys
from typing import Any

import click


def handle_errors(func):
    """Turn TIO errors into one clear line and an exit code (2 for configuration)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from tio.errors import ConfigError, TioError

        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except TioError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: finished stages are kept; run again to continue", err=True)
            sys.exit(130)

    return wrapper


def parse_bbox(text: str | None) -> list[float] | str | None:
    """``W,S,E,N`` in degrees to 4 floats; a GeoJSON path or WKT string is kept as given.

    The value is validated by the configuration model (:func:`tio.aoi.parse_aoi`).
    """
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        return text
    return values if len(values) == 4 else text


def collect_overrides(sets: tuple[str, ...], flags: dict[str, Any]) -> dict[str, Any]:
    """``--set`` strings then explicit flags (those not None) as ``{dotted: value}``."""
    from tio.config import parse_override

    out: dict[str, Any] = {}
    for text in sets:
        key, value = parse_override(text)
        out[key] = value
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


_INPUT_OPTIONS = [
    click.argument("inputs", nargs=-1, type=click.Path()),
    click.option(
        "-c",
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="TOML or YAML configuration file (see `tio config`).",
    ),
    click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="SECTION.NAME=VALUE",
        help="Override any parameter; repeatable.",
    ),
    click.option(
        "--aoi", help="Area of interest: WEST,SOUTH,EAST,NORTH in degrees, a GeoJSON file or WKT."
    ),
    click.option("--start", help="First date kept (YYYY-MM-DD)."),
    click.option("--end", help="Last date kept (YYYY-MM-DD)."),
    click.option("--band", help="Band of SAFE products [default: B04]."),
]


def input_options(func):
    """INPUTS, --config, --set, --aoi, --start, --end, --band: what `tio run` and
    `tio pairs` read the same way (turn them into overrides with :func:`input_flags`)."""
    for decorator in reversed(_INPUT_OPTIONS):
        func = decorator(func)
    return func


def input_flags(inputs, aoi, start, end, band) -> dict[str, Any]:
    """The dotted overrides of :func:`input_options`' values."""
    return {
        "input.paths": list(inputs) or None,
        "input.aoi": parse_bbox(aoi),
        "input.start": start,
        "input.end": end,
        "input.band": band,
    }
