"""A STAC catalog of a run's products, so catalogue tools can index a run.

``catalog.json`` (STAC 1.0 Catalog) in the run folder links one Item for the time
series (``timeseries.json``: the cumulative displacement, velocity, uncertainty,
residual and count GeoTIFFs, the NetCDF cube, quicklooks, animation, report,
tables) and one Item per corrected pair map (``pairs/corrected/DATE1_DATE2.json``,
with the pair's two dates as ``start_datetime``/``end_datetime``). Geometries are
the grid footprint in longitude/latitude; the grid itself is described with the
projection extension (``proj:code`` or ``proj:wkt2``, ``proj:shape``,
``proj:transform``). Asset hrefs are relative, so the folder can be moved or served.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from . import __version__
from ._mapdecor import Georef
from .raster import atomic_path

__all__ = ["write_stac_catalog"]

STAC_VERSION = "1.0.0"
PROJ_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"

_MEDIA = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".nc": "application/netcdf",
    ".png": "image/png",
    ".csv": "text/csv",
    ".html": "text/html",
    ".json": "application/json",
    ".gif": "image/gif",
    ".mp4": "video/mp4",
    ".txt": "text/plain",
    ".toml": "application/toml",
}

_TITLES = {
    "cumulative_ew.tif": ("Cumulative east-west displacement (m, + east), band = date", ["data"]),
    "cumulative_ns.tif": (
        "Cumulative north-south displacement (m, + north), band = date",
        ["data"],
    ),
    "cumulative_magnitude.tif": ("Cumulative horizontal displacement magnitude (m)", ["data"]),
    "cumulative_ew_sigma.tif": ("1-sigma uncertainty of cumulative east-west (m)", ["uncertainty"]),
    "cumulative_ns_sigma.tif": (
        "1-sigma uncertainty of cumulative north-south (m)",
        ["uncertainty"],
    ),
    "velocity.tif": ("Mean velocity EW, NS, magnitude and 1-sigma (m/year)", ["data"]),
    "rms_date_ew.tif": ("Residual RMS east-west per date (m)", ["quality"]),
    "rms_date_ns.tif": ("Residual RMS north-south per date (m)", ["quality"]),
    "n_pairs.tif": ("Number of pairs used per pixel", ["quality"]),
    "timeseries.nc": ("CF-1.8 NetCDF cube of every product", ["data"]),
    "rms_pair.csv": ("Residual RMS per pair", ["metadata"]),
    "points.csv": ("Time series at points", ["data"]),
    "report.html": ("Report of the run", ["metadata"]),
    "animation.png": ("Animated cumulative displacement (APNG)", ["overview"]),
    "quicklook_cumulative.png": ("Quicklook of the cumulative displacement", ["overview"]),
    "quicklook_velocity.png": ("Quicklook of the mean velocity", ["overview"]),
    "quicklook_rms.png": ("Quicklook of the residual RMS", ["overview"]),
    "quicklook_coverage.png": ("Quicklook of the data coverage", ["overview"]),
    "config.toml": ("Configuration of the run", ["metadata"]),
    "tio.log": ("Log of the run", ["metadata"]),
}


def _footprint(geo: Georef) -> tuple[dict | None, list[float] | None]:
    if not geo.metric:
        return None, None
    from pyproj import CRS, Transformer

    left, right, bottom, top = geo.extent
    t = Transformer.from_crs(CRS.from_wkt(geo.crs), "EPSG:4326", always_xy=True)
    xs = np.concatenate(
        [
            np.linspace(left, right, 11),
            np.full(11, right),
            np.linspace(right, left, 11),
            np.full(11, left),
        ]
    )
    ys = np.concatenate(
        [
            np.full(11, top),
            np.linspace(top, bottom, 11),
            np.full(11, bottom),
            np.linspace(bottom, top, 11),
        ]
    )
    lon, lat = t.transform(xs, ys)
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat))]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _proj(geo: Georef) -> dict:
    props: dict = {"proj:shape": list(geo.shape), "proj:transform": list(geo.transform)[:6]}
    if geo.crs:
        from pyproj import CRS

        crs = CRS.from_wkt(geo.crs)
        epsg = crs.to_epsg()
        if epsg:
            props["proj:code"] = f"EPSG:{epsg}"
        else:
            props["proj:wkt2"] = crs.to_wkt()
    else:
        props["proj:code"] = None
    return props


def _asset(path: Path, href: str) -> dict:
    title, roles = _TITLES.get(path.name, (path.name, ["data"]))
    media = _MEDIA.get(path.suffix.lower(), "application/octet-stream")
    if path.name.endswith("_4326.png"):
        roles = ["overlay", "visual"]
    return {"href": href, "type": media, "title": title, "roles": roles}


def _item(item_id, geo, geometry, bbox, start, end, assets, self_href, root_href, extra=None):
    props = {
        "datetime": None,
        "start_datetime": f"{start}T00:00:00Z",
        "end_datetime": f"{end}T23:59:59Z",
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "processing:software": {"tio": __version__},
        **_proj(geo),
        **(extra or {}),
    }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJ_EXT],
        "id": item_id,
        "geometry": geometry,
        **({"bbox": bbox} if bbox else {}),
        "properties": props,
        "links": [
            {"rel": "root", "href": root_href, "type": "application/json"},
            {"rel": "parent", "href": root_href, "type": "application/json"},
            {"rel": "self", "href": self_href, "type": "application/geo+json"},
        ],
        "assets": assets,
    }


def _write_json(path: Path, doc: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    return path


def write_stac_catalog(run_dir: str | Path, geo: Georef, dates: list[str]) -> Path:
    """Write ``catalog.json`` and its items for the products present in ``run_dir``."""
    run = Path(run_dir)
    geometry, bbox = _footprint(geo)
    name = run.resolve().name
    skip = {"catalog.json", "timeseries.json", "stack.nc", "stack.zarr"}
    files = sorted(
        p
        for p in run.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in skip
    )
    overlays = run / "overlays"
    if overlays.is_dir():
        files += sorted(p for p in overlays.iterdir() if p.suffix in (".png", ".json"))
    assets = {}
    for p in files:
        rel = p.relative_to(run).as_posix()
        key = rel.replace("/", "_").rsplit(".", 1)[0]
        assets[key] = _asset(p, "./" + rel)
    links = [
        {"rel": "root", "href": "./catalog.json", "type": "application/json"},
        {"rel": "self", "href": "./catalog.json", "type": "application/json"},
        {"rel": "item", "href": "./timeseries.json", "type": "application/geo+json"},
    ]
    _write_json(
        run / "timeseries.json",
        _item(
            f"{name}-timeseries",
            geo,
            geometry,
            bbox,
            dates[0],
            dates[-1],
            assets,
            "./timeseries.json",
            "./catalog.json",
            {"tio:dates": dates},
        ),
    )
    corrected = run / "pairs" / "corrected"
    if corrected.is_dir():
        from .raster import dates_from_name

        for tif in sorted(corrected.glob("*.tif")):
            pair = dates_from_name(tif.stem)
            if pair is None:
                continue
            d1, d2 = (d.isoformat() for d in pair)
            item_path = tif.with_suffix(".json")
            _write_json(
                item_path,
                _item(
                    f"{name}-pair-{tif.stem}",
                    geo,
                    geometry,
                    bbox,
                    d1,
                    d2,
                    {
                        "data": {
                            "href": f"./{tif.name}",
                            "type": _MEDIA[".tif"],
                            "title": "Corrected pair map: band 1 EW (m, + east), "
                            "band 2 NS (m, + north), band 3 correlation score",
                            "roles": ["data"],
                        }
                    },
                    f"./{item_path.name}",
                    "../../catalog.json",
                ),
            )
            links.append(
                {
                    "rel": "item",
                    "href": "./" + item_path.relative_to(run).as_posix(),
                    "type": "application/geo+json",
                }
            )
    catalog = {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": f"tio-{name}",
        "title": f"TIO displacement time series {dates[0]} to {dates[-1]}",
        "description": "Products of a TIO run: cumulative displacement time series, velocity, "
        "uncertainties, residuals and the corrected pair maps.",
        "links": links,
    }
    return _write_json(run / "catalog.json", catalog)
