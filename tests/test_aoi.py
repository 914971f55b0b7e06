import dataclasses
import datetime as dt
import json

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from tio.aoi import parse_aoi, utm_crs
from tio.config import load_config
from tio.errors import ConfigError, NoOverlapError
from tio.ingest import open_scene
from tio.stack import build_stack, grid_for

L8 = "landsat8_pan_p020r039/l8_B8.tif"


def test_box_geojson_and_wkt_give_the_same_bounds(tmp_path):
    box = (6.8, 45.9, 6.9, 45.95)
    poly = {
        "type": "Polygon",
        "coordinates": [[[6.8, 45.9], [6.9, 45.9], [6.9, 45.95], [6.8, 45.95], [6.8, 45.9]]],
    }
    f = tmp_path / "aoi.geojson"
    f.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {}, "geometry": poly}],
            }
        )
    )
    wkt = "POLYGON ((6.8 45.9, 6.9 45.9, 6.9 45.95, 6.8 45.95, 6.8 45.9))"
    for value in (box, "6.8,45.9,6.9,45.95", str(f), wkt):
        assert parse_aoi(value).bounds == pytest.approx(box)
    assert parse_aoi(str(f)).wkt.startswith("POLYGON")


@pytest.mark.parametrize(
    "bad", ["nonsense", "POLYGON ((1 2, 3", [1, 2, 3], (10, 0, 5, 1), "/nope/aoi.geojson"]
)
def test_bad_aoi_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        parse_aoi(bad)
    with pytest.raises(ConfigError, match="input.aoi"):
        load_config(None, {"input.aoi": bad})


def test_utm_zone():
    assert utm_crs(6.85, 45.9) == "EPSG:32632"
    assert utm_crs(-70.0, -33.0) == "EPSG:32719"
    assert utm_crs(179.9, 10) == "EPSG:32660"
    with pytest.raises(ConfigError, match="input.crs"):
        load_config(None, {"input.crs": "EPSG:4326"})


def test_grid_in_the_aoi_utm_zone_and_another_crs(shared_data):
    scene = open_scene(shared_data / L8)
    aoi = transform_bounds("EPSG:32616", "EPSG:4326", 455000, 3395000, 460000, 3400000)
    own = grid_for(scene, aoi)
    assert CRS.from_wkt(own.crs).to_epsg() == 32616  # the AOI's zone is the image's: its lattice
    assert (own.transform.c - 452467.5) % 15 == pytest.approx(0)
    other = grid_for(scene, aoi, crs="EPSG:32617", resolution=20)
    assert CRS.from_wkt(other.crs).to_epsg() == 32617
    assert other.transform.a == 20 and other.transform.c % 20 == 0
    dated = [dataclasses.replace(scene, date=dt.date(2015, 8, d)) for d in (4, 20)]
    stack = build_stack(dated, aoi=aoi, crs="EPSG:32617", resolution=20)
    assert np.isfinite(stack["image"].values).mean() > 0.99
    with pytest.raises(NoOverlapError):
        grid_for(scene, (10.0, 45.0, 10.1, 45.1))
