"""``tio``: the command group."""

from __future__ import annotations

import click

from tio import __version__

from .config import config_cmd
from .correlate import correlate_cmd
from .demo import demo_cmd
from .invert import invert_cmd
from .pairs import pairs_cmd
from .quicklook import quicklook_cmd
from .run import run_cmd
from .scenes import scenes_cmd
from .search import search_cmd
from .serve import serve_cmd

EPILOG = """\b
Examples:
  tio demo                          generate a scene with a landslide, process it, check the error
  tio run scenes/ -o out/           process a folder of dated GeoTIFFs / SAFE products
  tio run S2*.SAFE --aoi 6.80,45.90,6.90,45.95 --band B04 -o out/
  tio scenes downloads/ --aoi 6.80,45.90,6.90,45.95   what a run would use, date by date
  tio pairs downloads/ --max-days 60 --plot net.png   the pair network a run would correlate
  tio search --aoi 6.80,45.90,6.90,45.95 --start 2023-06-01 --end 2023-09-30 --max-cloud 20
                                    Sentinel-2 scenes in a STAC catalogue (Earth Search by default)
  tio run --aoi 6.80,45.90,6.90,45.95 --start 2023-06-01 --end 2023-09-30 -o out/
                                    the same search, then only the area is read over HTTP
  tio config > tio.toml             write the defaults, edit, then: tio run --config tio.toml
  tio correlate a.tif b.tif -o pair.tif   offsets between two images (EW, NS, score)
  tio quicklook out/ --points sites.csv   redraw pictures, animation and report of a run
  tio serve --data-dir alps=/data/alps   web portal and OGC API on http://127.0.0.1:8000/
  tio invert pairs/*.tif -o series/       pair maps -> cumulative displacement per date
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tio")
def cli():
    """TIO: time series of ground displacement from optical satellite images.

    Correlates a redundant network of image pairs, corrects each pair and inverts
    the network pixel by pixel into cumulative east-west and north-south
    displacement at every date (metres, positive east and north).
    """


cli.add_command(run_cmd)
cli.add_command(scenes_cmd)
cli.add_command(pairs_cmd)
cli.add_command(search_cmd)
cli.add_command(demo_cmd)
cli.add_command(correlate_cmd)
cli.add_command(invert_cmd)
cli.add_command(config_cmd)
cli.add_command(quicklook_cmd)
cli.add_command(serve_cmd)
