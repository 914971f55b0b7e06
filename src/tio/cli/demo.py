"""``tio demo``: generate a scene with a landslide, run the chain, report the error."""

from __future__ import annotations

import click

from ._common import handle_errors

EPILOG = """\b
Examples:
  tio demo                       into ./tio-demo (scenes/, output/)
  tio demo -o /tmp/demo --seed 3 another random scene
  tio demo --size 800 --dates 20 a larger scene (slower)
"""


@click.command("demo", epilog=EPILOG)
@click.option(
    "-o",
    "--output",
    default="tio-demo",
    show_default=True,
    help="Folder for the generated scenes and the products.",
)
@click.option(
    "--size",
    default=400,
    show_default=True,
    type=click.IntRange(128, 4000),
    help="Scene width and height, pixels.",
)
@click.option(
    "--dates",
    default=12,
    show_default=True,
    type=click.IntRange(3, 200),
    help="Number of acquisition dates.",
)
@click.option("--seed", default=0, show_default=True, help="Random seed of the scene.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def demo_cmd(output, size, dates, seed, quiet):
    """Generate a realistic scene with an accelerating landslide, process it like `tio run`,
    and print the error of the recovered displacement against the known truth."""
    from tio.demo import run_demo

    report = run_demo(output, shape=(size, size), n_dates=dates, seed=seed, progress=not quiet)
    click.echo("\n".join(report.lines()))
    click.echo(f"products in {report.out_dir.resolve()}")
