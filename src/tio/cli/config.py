"""``tio config``: print the default configuration as a commented TOML file."""

from __future__ import annotations

import click

from ._common import handle_errors

EPILOG = """\b
Examples:
  tio config                         print every parameter with its default and meaning
  tio config > tio.toml              start a configuration file
  tio config --check tio.toml        validate a file (exit 2 with one line if invalid)
"""


@click.command("config", epilog=EPILOG)
@click.option(
    "--check",
    "check",
    type=click.Path(dir_okay=False),
    help="Validate this file and print it merged with the defaults.",
)
@handle_errors
def config_cmd(check):
    """Print the configuration (defaults, or a checked file) as commented TOML."""
    from tio.config import dump_toml, load_config

    click.echo(dump_toml(load_config(check) if check else None))
