"""Search STAC catalogues and turn their items into TIO scenes.

:func:`search` asks a STAC API (through pystac-client) for the Sentinel-2 items
over an area and a date range under a cloud limit, parses each item into a
:class:`tio.ingest.Scene` whose path is the band's cloud-optimised GeoTIFF over
HTTP (GDAL ``/vsicurl/``: only the blocks covering the area are read) and whose
``mask_path`` is the L2A scene classification (SCL), then:

* keeps one item per acquisition (same date and platform): on each tile the
  newest processing baseline; when the area spans several tiles, the tile that
  covers the most of it, merged with the other tiles that cover the rest (the
  others are listed as left out, with the reason);
* keeps one relative orbit: the one asked for, else the orbit that covers the
  whole area on the most dates.

Known catalogues (``--catalog``; any other STAC API URL works too):

================== ====================================================
earth-search       https://earth-search.aws.element84.com/v1 (default)
cdse               https://stac.dataspace.copernicus.eu/v1
planetary-computer https://planetarycomputer.microsoft.com/api/stac/v1
================== ====================================================

Planetary Computer asset URLs are signed through the optional
``planetary-computer`` package (``pip install 'tio[planetary]'``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import AuthError, CatalogError, InputError
from .ingest import Scene, check_date_limit

log = logging.getLogger(__name__)

__all__ = [
    "CATALOGS",
    "Candidate",
    "SearchResult",
    "asset_checksum",
    "catalog_url",
    "download",
    "gdal_path",
    "item_to_scene",
    "search",
    "select",
    "write_geojson",
]

CATALOGS = {
    "earth-search": "https://earth-search.aws.element84.com/v1",
    "cdse": "https://stac.dataspace.copernicus.eu/v1",
    "planetary-computer": "https://planetarycomputer.microsoft.com/api/stac/v1",
}

COLLECTIONS = ("sentinel-2-l2a", "sentinel-2-l1c")

# Sentinel-2 band -> common name (asset key of Earth Search v1)
_COMMON = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
}
_NATIVE = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20}
_NATIVE.update({"B8A": 20, "B11": 20, "B12": 20, "B01": 60, "B09": 60, "B10": 60})


def catalog_url(catalog: str) -> str:
    """The STAC API URL of a known catalogue name, or ``catalog`` itself if it is a URL."""
    if catalog in CATALOGS:
        return CATALOGS[catalog]
    if re.match(r"^https?://", catalog):
        return catalog.rstrip("/")
    raise CatalogError(
        f"unknown catalogue {catalog!r}: give a STAC API URL or one of {', '.join(CATALOGS)}"
    )


def gdal_path(href: str) -> str:
    """What GDAL opens for an asset href: URLs through /vsicurl/, s3:// through /vsis3/."""
    if href.startswith("s3://"):
        return "/vsis3/" + href[len("s3://") :]
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("file://"):
        return href[len("file://") :]
    return href


def _platform(props: dict, item_id: str) -> str:
    p = str(props.get("platform", "")).strip()
    m = re.search(r"sentinel-?2([abcd])", p, re.I) or re.match(r"S2([ABCD])_", item_id)
    return f"Sentinel-2{m[1].upper()}" if m else p


def _product_names(props: dict, item_id: str) -> list[str]:
    keys = ("s2:product_uri", "sentinel:product_id", "s2:datatake_id", "s2:granule_id")
    return [str(props[k]) for k in keys if props.get(k)] + [item_id]


def _tile(props: dict, item_id: str) -> str:
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"]).lstrip("T")
    if props.get("mgrs:utm_zone") and props.get("mgrs:latitude_band"):
        return (
            f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}"
            f"{props.get('mgrs:grid_square', '')}"
        )
    if str(props.get("grid:code", "")).startswith("MGRS-"):
        return str(props["grid:code"])[5:]
    if props.get("sentinel:utm_zone") and props.get("sentinel:latitude_band"):
        return (
            f"{int(props['sentinel:utm_zone']):02d}{props['sentinel:latitude_band']}"
            f"{props.get('sentinel:grid_square', '')}"
        )
    for name in _product_names(props, item_id):
        m = re.search(r"(?:^|_)T?(\d{2}[C-X][A-Z]{2})(?:_|\.|$)", name)
        if m:
            return m[1]
    return ""


def _orbit(props: dict, item_id: str) -> int | None:
    if props.get("sat:relative_orbit") is not None:
        return int(props["sat:relative_orbit"])
    for name in _product_names(props, item_id):
        m = re.search(r"_R(\d{3})_", name)
        if m:
            return int(m[1])
    return None


def _baseline(props: dict, item_id: str) -> str:
    if props.get("s2:processing_baseline"):
        return str(props["s2:processing_baseline"])
    for name in _product_names(props, item_id):
        m = re.search(r"_N(\d{2})(\d{2})(?:_|\.|$)", name)
        if m:
            return f"{m[1]}.{m[2]}"
    return ""


def _asset_for(assets: dict[str, Any], band: str) -> tuple[str, Any] | None:
    """The asset of a Sentinel-2 band (``B04``, ``B04_60m``) in any catalogue's naming."""
    name, _, res = band.upper().partition("_")
    keys = [band, band.upper()]
    if res:
        keys.append(f"{name}_{res.lower()}")
    common = _COMMON.get(name)
    keys += [name, name.lower(), f"{name}_{_NATIVE.get(name, 10)}m"]
    if common:
        keys += [common, f"{common}-cog"]
    for k in keys:
        if k in assets:
            return k, assets[k]
    for k, a in assets.items():  # eo:bands names
        bands = (getattr(a, "extra_fields", None) or a or {}).get("eo:bands") or []
        if any(b.get("name") in (name, common) for b in bands if isinstance(b, dict)):
            if "jp2" not in k:
                return k, a
    return None


def _href(asset) -> str:
    return asset.href if hasattr(asset, "href") else asset["href"]


def item_to_scene(item, band: str = "B04") -> Scene:
    """A STAC item (pystac Item or dict) as a Scene reading ``band`` over HTTP.

    Raises
    ------
    InputError
        The item has no date or no asset for ``band``.
    """
    d = item.to_dict(transform_hrefs=False) if hasattr(item, "to_dict") else item
    props, item_id, assets = d.get("properties", {}), d["id"], d.get("assets", {})
    stamp = props.get("datetime") or props.get("start_datetime")
    if not stamp:
        raise InputError(f"STAC item {item_id} has no datetime")
    date = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).date()
    found = _asset_for(assets, band)
    if found is None:
        raise InputError(
            f"STAC item {item_id} has no asset for band {band} (assets: {', '.join(assets)})"
        )
    scl = next((assets[k] for k in ("scl", "SCL", "SCL_20m", "SCL_60m") if k in assets), None)
    cloud = props.get("eo:cloud_cover")
    return Scene(
        path=gdal_path(_href(found[1])),
        date=date,
        source=item_id,
        nodata=0.0,
        sensor=_platform(props, item_id),
        tile=_tile(props, item_id),
        orbit=_orbit(props, item_id),
        cloud_cover=None if cloud is None else float(cloud),
        mask_path=gdal_path(_href(scl)) if scl is not None else None,
    )


@dataclass
class Candidate:
    """One catalogue item: its scene, how much of the area it covers, and its fate."""

    item: dict
    scene: Scene
    coverage: float
    baseline: str
    kept: bool = True
    reason: str = ""


@dataclass
class SearchResult:
    """What :func:`search` found: every item (kept or not) and the orbit chosen."""

    url: str
    candidates: list[Candidate]
    orbit: int | None

    @property
    def scenes(self) -> list[Scene]:
        return [c.scene for c in self.candidates if c.kept]


def _open_client(url: str, *, attempts: int, backoff: float):
    import pystac_client
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(
        total=attempts - 1,
        backoff_factor=backoff,
        status_forcelist=[429, 500, 502, 503, 504],
        allowed_methods=None,
        raise_on_status=False,
    )
    modifier = None
    if "planetarycomputer" in url:
        try:
            import planetary_computer
        except ImportError:
            raise CatalogError(
                f"{url}: signing Planetary Computer items needs the planetary-computer "
                "package: pip install 'tio[planetary]'"
            ) from None
        modifier = planetary_computer.sign_inplace
    return pystac_client.Client.open(
        url, stac_io=StacApiIO(max_retries=retry, timeout=60), modifier=modifier
    )


def _query(url: str, fn):
    """Call ``fn()``; turn pystac-client and network errors into one clear line."""
    import pystac
    import requests
    from pystac_client.exceptions import APIError

    try:
        return fn()
    except APIError as exc:
        code = getattr(exc, "status_code", None)
        if code in (401, 403):
            raise AuthError(
                f"{url}: HTTP {code}, the catalogue refused access: check the credentials "
                "or the catalogue URL"
            ) from None
        text = " ".join(str(exc).split())[:200]
        raise CatalogError(f"{url}: the catalogue answered HTTP {code}: {text}") from None
    except requests.RequestException as exc:
        raise CatalogError(
            f"{url}: cannot reach the catalogue ({type(exc).__name__}) after retries"
        ) from None
    except (pystac.STACError, pystac.STACTypeError, ValueError, KeyError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise CatalogError(f"{url}: not a STAC API answer ({text})") from None


def _conforms(client, name: str) -> bool:
    try:
        return bool(client.conforms_to(name))
    except Exception:  # noqa: BLE001 - conformance unknown: treated as absent
        return False


def _cloud_filter(client, max_cloud: float | None) -> dict:
    """The cloud limit as a CQL2 filter, else a query, else nothing (filtered here)."""
    if max_cloud is None:
        return {}
    if _conforms(client, "FILTER"):
        return {
            "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]},
            "filter_lang": "cql2-json",
        }
    if _conforms(client, "QUERY"):
        return {"query": {"eo:cloud_cover": {"lte": max_cloud}}}
    return {}


def search(
    aoi,
    start: dt.date | str | None,
    end: dt.date | str | None,
    *,
    catalog: str = "earth-search",
    collection: str = "sentinel-2-l2a",
    max_cloud: float | None = None,
    orbit: int | None = None,
    band: str = "B04",
    limit: int = 1000,
    attempts: int = 4,
    backoff: float = 0.5,
) -> SearchResult:
    """Items over ``aoi`` between ``start`` and ``end``; see the module docstring.

    ``max_cloud`` is the product cloud cover in percent (catalogue metadata).

    Raises
    ------
    CatalogError
        The catalogue cannot be reached or refuses the query, or nothing matches
        (the message suggests widening the dates or the cloud limit).
    AuthError
        HTTP 401/403.
    """
    from .aoi import parse_aoi

    if aoi is None:
        raise CatalogError("a catalogue search needs an area of interest (--aoi)")
    area = parse_aoi(aoi)
    url = catalog_url(catalog)
    client = _query(url, lambda: _open_client(url, attempts=attempts, backoff=backoff))
    s = start.isoformat() if isinstance(start, dt.date) else (start or "..")
    e = end.isoformat() if isinstance(end, dt.date) else (end or "..")
    interval = f"{s}T00:00:00Z/{e}T23:59:59Z".replace("..T00:00:00Z", "..").replace(
        "..T23:59:59Z", ".."
    )
    kwargs = dict(
        collections=[collection],
        bbox=list(area.bounds),
        datetime=interval,
        max_items=limit,
        limit=min(limit, 100),
    )
    kwargs.update(_cloud_filter(client, max_cloud))
    log.info("searching %s (%s) %s %s", url, collection, area.bounds, interval)
    items = _query(url, lambda: [i.to_dict() for i in client.search(**kwargs).items()])
    cands = []
    for d in items:
        cloud = d.get("properties", {}).get("eo:cloud_cover")
        if max_cloud is not None and cloud is not None and float(cloud) > max_cloud:
            continue  # a server without the filter extension
        try:
            scene = item_to_scene(d, band)
        except InputError as exc:
            log.warning("%s", exc)
            continue
        cands.append(
            Candidate(d, scene, _coverage(d, area), _baseline(d.get("properties", {}), d["id"]))
        )
    if not cands:
        raise CatalogError(
            f"{url}: no {collection} scene over {tuple(round(b, 4) for b in area.bounds)} "
            f"from {s} to {e}"
            + (f" with at most {max_cloud:g} % cloud" if max_cloud is not None else "")
            + ": widen the dates or raise the cloud limit (tio search --max-cloud, "
            "input.catalog_max_cloud for tio run)"
        )
    chosen = select(cands, orbit=orbit, area=area)
    return SearchResult(url, sorted(cands, key=lambda c: (c.scene.date, c.scene.source)), chosen)


def _footprint(item: dict):
    from shapely.geometry import box, shape

    try:
        return shape(item["geometry"]) if item.get("geometry") else box(*item["bbox"])
    except (KeyError, TypeError, ValueError):
        return None


def _coverage(item: dict | None, area, items: list[dict] | None = None) -> float:
    """Share of the area (lon/lat box or polygon) inside the footprint of ``item`` (or the
    union of ``items``)."""
    from shapely import union_all, wkt

    target = wkt.loads(area.wkt)
    feet = [f for f in (_footprint(i) for i in (items or [item])) if f is not None]
    if not feet:
        return 0.0
    foot = union_all(feet)
    if target.area == 0:
        return float(foot.intersects(target))
    return float(foot.intersection(target).area / target.area)


def select(cands: list[Candidate], *, orbit: int | None = None, area=None) -> int | None:
    """Mark the duplicates and other orbits as not kept; return the orbit kept.

    Duplicates are the items of one acquisition (same date and platform): on one
    tile the newest processing baseline is kept; across tiles the one covering
    the most of the area, with the other tiles that add to its coverage as its
    ``parts`` (merged when read, see :func:`tio.stack.read_on_grid`) when the
    area (an :class:`tio.aoi.Aoi`) is given and spans them. The orbit is ``orbit``,
    else the one covering the whole area (99 %) on the most dates (ties: the most
    covered on average).
    """
    # 1. processing baselines: one item per (date, platform, tile)
    groups: dict[tuple, list[Candidate]] = defaultdict(list)
    for c in cands:
        groups[(c.scene.date, c.scene.sensor, c.scene.tile)].append(c)
    for group in groups.values():
        group.sort(key=lambda c: (c.baseline, c.item.get("properties", {}).get("updated", "")))
        for c in group[:-1]:
            c.kept = False
            c.reason = f"older processing baseline {c.baseline} than {group[-1].baseline}"
    # 2. relative orbit
    live = [c for c in cands if c.kept]
    orbits = {c.scene.orbit for c in live if c.scene.orbit is not None}
    if orbit is None and len(orbits) > 1:

        def score(o):
            mine = [c for c in live if c.scene.orbit == o]
            dates: dict[dt.date, list[Candidate]] = defaultdict(list)
            for c in mine:
                dates[c.scene.date].append(c)
            cover = {
                d: _coverage(None, area, [c.item for c in g])
                if area is not None and len(g) > 1
                else max(c.coverage for c in g)
                for d, g in dates.items()
            }
            full = [d for d, v in cover.items() if v >= 0.99]
            return (len(full), sum(cover.values()) / len(cover))

        orbit = max(sorted(orbits), key=score)
        log.info(
            "relative orbit %d chosen: it covers the area on the most dates (%s)",
            orbit,
            ", ".join(f"R{o:03d}: {score(o)[0]}" for o in sorted(orbits)),
        )
    if orbit is not None:
        for c in live:
            if c.scene.orbit is not None and c.scene.orbit != orbit:
                c.kept = False
                c.reason = f"relative orbit {c.scene.orbit}, not {orbit}"
    # 3. tiles: one item per acquisition; tiles merged when the area spans them
    acq: dict[tuple, list[Candidate]] = defaultdict(list)
    for c in cands:
        if c.kept:
            acq[(c.scene.date, c.scene.sensor)].append(c)
    for group in acq.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda c: c.coverage)
        best = group.pop()
        parts: list[Candidate] = []
        if area is not None and best.coverage < 0.99:
            covered = best.coverage
            for c in reversed(group):
                more = _coverage(None, area, [best.item, *(p.item for p in parts), c.item])
                if more > covered + 0.01:
                    parts.append(c)
                    covered = more
        for c in group:
            c.kept = False
            if c in parts:
                c.reason = f"merged into {best.scene.source} (tile {best.scene.tile})"
            else:
                c.reason = (
                    f"same acquisition on tile {best.scene.tile}, which covers more of the "
                    f"area ({100 * best.coverage:.0f} % against {100 * c.coverage:.0f} %)"
                )
        if parts:
            best.scene = replace(best.scene, parts=tuple(p.scene for p in parts))
            best.coverage = covered
            log.info(
                "%s: the area spans tiles %s, merged",
                best.scene.date,
                ", ".join([best.scene.tile, *(p.scene.tile for p in parts)]),
            )
        elif best.coverage < 0.99:
            log.warning(
                "%s: tile %s covers %.0f %% of the area and no other tile adds to it",
                best.scene.date,
                best.scene.tile,
                100 * best.coverage,
            )
    # 4. a second platform on the same date: keep the best covered one
    by_date: dict[dt.date, list[Candidate]] = defaultdict(list)
    for c in cands:
        if c.kept:
            by_date[c.scene.date].append(c)
    for group in by_date.values():
        group.sort(key=lambda c: (c.coverage, -(c.scene.cloud_cover or 0)))
        for c in group[:-1]:
            c.kept = False
            c.reason = f"another acquisition of the same date is kept ({group[-1].scene.source})"
    return orbit


def scenes_for(cfg) -> list[Scene]:
    """The scenes of a run whose input section has an area and dates but no paths."""
    result = search(
        cfg.aoi,
        cfg.start,
        cfg.end,
        catalog=cfg.catalog,
        collection=cfg.collection,
        max_cloud=cfg.catalog_max_cloud,
        orbit=cfg.orbit,
        band=cfg.band,
    )
    for c in result.candidates:
        if not c.kept:
            log.info("%s (%s) left out: %s", c.scene.source, c.scene.date, c.reason)
    scenes = result.scenes
    # before anything is downloaded or read
    check_date_limit(scenes, getattr(cfg, "max_dates", None), where=result.url)
    if "dataspace.copernicus.eu" in result.url:
        scenes = _cdse_download(result, cfg)
    if len(scenes) < 2:
        raise CatalogError(
            f"{result.url}: need at least 2 dates, the search kept {len(scenes)}: widen the "
            "dates or raise the cloud limit (input.catalog_max_cloud)"
        )
    log.info("%d scenes from %s (%s)", len(scenes), result.url, cfg.collection)
    return scenes


def _product_name(c: Candidate) -> str:
    """The SAFE product name of an item (Copernicus Data Space ids are product names)."""
    return str(c.item.get("properties", {}).get("s2:product_uri") or c.item["id"])


def _cdse_download(result: SearchResult, cfg) -> list[Scene]:
    """Copernicus Data Space: fetch each kept product's SAFE archive into the cache."""
    from .download import Cache, download_cdse_safe
    from .ingest import open_scene

    cache = Cache(cfg.cache_dir, int(cfg.cache_limit * 1e9))
    out = []
    for c in result.candidates:
        if not c.kept:
            continue
        path = download_cdse_safe(_product_name(c), cache)
        out.append(replace(open_scene(path, band=cfg.band), source=c.scene.source))
    return out


def asset_checksum(asset: dict):
    """The STAC ``file:checksum`` of an asset as a :class:`tio.download.Checksum`, or None."""
    from .download import parse_multihash

    value = asset.get("file:checksum")
    return parse_multihash(value) if value else None


def download(result: SearchResult, cache, *, band: str = "B04") -> list[Path]:
    """The kept items' files into ``cache`` (a :class:`tio.download.Cache`), verified.

    STAC assets (the band and the SCL) are fetched over HTTP(S) and checked against
    their ``file:checksum`` when the catalogue gives one; Copernicus Data Space
    products are fetched as SAFE archives through OData (credentials needed).
    """
    from .download import download_cdse_safe

    paths = []
    for c in result.candidates:
        if not c.kept:
            continue
        if "dataspace.copernicus.eu" in result.url:
            props = c.item.get("properties", {})
            paths.append(
                download_cdse_safe(str(props.get("s2:product_uri") or c.item["id"]), cache)
            )
            continue
        assets = c.item.get("assets", {})
        found = _asset_for(assets, band)
        keys = [found[0]] if found else []
        keys += [k for k in ("scl", "SCL", "SCL_20m") if k in assets][:1]
        for key in keys:
            href = assets[key]["href"]
            if not href.startswith(("http://", "https://")):
                raise CatalogError(f"{href}: only HTTP(S) assets can be downloaded")
            name = f"{key}{Path(href.split('?')[0]).suffix}"
            paths.append(
                cache.fetch(href, c.item["id"], name, checksum=asset_checksum(assets[key]))
            )
    return paths


@contextlib.contextmanager
def remote_gdal_env(remote: bool = True):
    """GDAL settings for reading COGs over HTTP: no directory listing, retries, caching."""
    if not remote:
        yield
        return
    import rasterio

    with rasterio.Env(
        GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
        GDAL_HTTP_TIMEOUT="60",
        GDAL_HTTP_MAX_RETRY="4",
        GDAL_HTTP_RETRY_DELAY="1",
        GDAL_HTTP_MERGE_CONSECUTIVE_RANGES="YES",
        GDAL_HTTP_MULTIPLEX="YES",
        VSI_CACHE="TRUE",
    ):
        yield


def write_geojson(result: SearchResult, path: str | Path) -> None:
    """The search as a GeoJSON FeatureCollection (temporary name, then renamed)."""
    from .raster import atomic_path

    feats = []
    for c in result.candidates:
        s = c.scene
        feats.append(
            {
                "type": "Feature",
                "id": s.source,
                "geometry": c.item.get("geometry"),
                "bbox": c.item.get("bbox"),
                "properties": {
                    "date": s.date.isoformat() if s.date else None,
                    "platform": s.sensor,
                    "tile": s.tile,
                    "relative_orbit": s.orbit,
                    "cloud_cover": s.cloud_cover,
                    "processing_baseline": c.baseline,
                    "aoi_coverage": round(c.coverage, 4),
                    "kept": c.kept,
                    "reason": c.reason,
                    "href": s.path,
                    "catalog": result.url,
                },
            }
        )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, indent=1))
