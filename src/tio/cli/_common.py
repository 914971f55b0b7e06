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
