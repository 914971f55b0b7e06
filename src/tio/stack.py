"""Put every date on one grid: read only the area of interest, resample when needed.

:func:`build_stack` reads each :class:`tio.ingest.Scene` into a common grid and
returns an :class:`xarray.Dataset`:

``image`` (time, y, x) float32
    Pixel values (digital numbers), NaN where there is no data.
coords ``time`` (datetime64), ``x``, ``y`` (map coordinates of pixel centres)
attrs ``crs`` (WKT or None), ``transform`` (6 floats), ``resampling``, ``grid``

The grid is the first scene's pixel grid, cut to the area of interest (a lon/lat
box, converted to the image CRS and snapped outward to whole pixels). A scene on
another grid (other CRS, resolution or alignment) is resampled onto it through a
GDAL warped VRT, so only the blocks covering the area are read.

No-data: the file's declared nodata value or mask; for SAFE products and for
16-bit images that declare none (Sentinel-2, Landsat digital numbers), 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from .errors import InputError, NoOverlapError, OutputError
from .ingest import Scene
from .raster import coords_from_transform

log = logging.getLogger(__name__)

__all__ = [
    "Grid",
    "boxes_overlap",
    "build_stack",
    "grid_for",
    "is_on_grid",
    "load_stack",
    "open_stack",
    "read_on_grid",
    "save_stack",
    "scene_bounds",
]


class Grid:
    """A north-up pixel grid: CRS (WKT or None), transform and shape."""

    def __init__(self, crs: str | None, transform: Affine, shape: tuple[int, int]):
        self.crs = crs
        self.transform = transform
        self.shape = shape

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t, (rows, cols) = self.transform, self.shape
        xs = (t.c, t.c + t.a * cols)
        ys = (t.f, t.f + t.e * rows)
        return min(xs), min(ys), max(xs), max(ys)

    def describe(self) -> str:
        t = self.transform
        return (
            f"{self.shape[1]} x {self.shape[0]} px of {abs(t.a):g} x {abs(t.e):g}, "
            f"origin ({t.c:.3f}, {t.f:.3f})"
        )


def _open(scene: Scene):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(scene.path)
    except RasterioError as exc:
        raise InputError(f"cannot open {scene.source}: {exc}") from None


def grid_for(
    scene: Scene,
    aoi=None,
    *,
    crs: str | None = None,
    resolution: float | None = None,
) -> Grid:
    """The output grid for ``scene`` and an optional area of interest.

    * No AOI, no CRS/resolution: ``scene``'s own pixel grid.
    * An AOI (anything :func:`tio.aoi.parse_aoi` takes): its bounds in the target CRS
      (``crs``, else the UTM zone of the AOI's centre), snapped outward to whole
      pixels. When the target CRS and pixel size are ``scene``'s, the grid keeps
      ``scene``'s pixel lattice and is cut to its footprint, so nothing is resampled.
      Otherwise pixels of ``resolution`` (default: ``scene``'s) are aligned on
      multiples of the pixel size, like Sentinel-2 and Landsat tiles.

    Raises
    ------
    NoOverlapError
        The AOI is outside ``scene``.
    InputError
        An AOI or CRS is asked for an image without georeferencing, or the pixel
        size cannot be derived (geographic image and no ``resolution``).
    """
    from .aoi import parse_aoi, utm_crs

    with _open(scene) as src:
        own_crs = src.crs.to_wkt() if src.crs else None
        if aoi is None and crs is None and resolution is None:
            return Grid(own_crs, src.transform, (src.height, src.width))
        if not src.crs:
            raise InputError(
                f"{scene.source} has no georeferencing, so an area of interest or a CRS "
                "cannot be placed on it"
            )
        area = parse_aoi(aoi) if aoi is not None else None
        if crs is not None:
            target = CRS.from_user_input(crs)
        elif area is not None:
            target = CRS.from_user_input(utm_crs(*area.centre))
        else:
            target = src.crs
        if resolution is None:
            if not src.crs.is_projected and not target == src.crs:
                raise InputError(
                    f"{scene.source} is in degrees: give input.resolution for a grid in {target}"
                )
            resolution = abs(src.transform.a)
        img_bounds = transform_bounds(src.crs, target, *src.bounds, densify_pts=21)
        own_box = tuple(src.bounds)
        for part in scene.parts:  # tiles merged with this one: their union
            with _open(part) as p_src:
                if p_src.crs == src.crs:
                    own_box = _union(own_box, tuple(p_src.bounds))
                img_bounds = _union(
                    img_bounds, transform_bounds(p_src.crs, target, *p_src.bounds, densify_pts=21)
                )
        if area is not None:
            box = transform_bounds("EPSG:4326", target, *area.bounds, densify_pts=21)
            if not boxes_overlap(box, img_bounds):
                raise NoOverlapError(
                    f"the area of interest {area.bounds} (lon/lat) is outside {scene.source}: "
                    f"AOI x {box[0]:.0f}..{box[2]:.0f}, y {box[1]:.0f}..{box[3]:.0f}; image "
                    f"x {img_bounds[0]:.0f}..{img_bounds[2]:.0f}, "
                    f"y {img_bounds[1]:.0f}..{img_bounds[3]:.0f} (in {target.to_string()})"
                )
        else:
            box = img_bounds
        same_lattice = target == src.crs and np.isclose(resolution, abs(src.transform.a))
        if same_lattice and abs(abs(src.transform.e) - abs(src.transform.a)) < 1e-9 * resolution:
            b = own_box
            win = from_bounds(
                max(box[0], b[0]),
                max(box[1], b[1]),
                min(box[2], b[2]),
                min(box[3], b[3]),
                src.transform,
            )
            c0, r0 = np.floor(win.col_off + 1e-6), np.floor(win.row_off + 1e-6)
            c1 = np.ceil(win.col_off + win.width - 1e-6)
            r1 = np.ceil(win.row_off + win.height - 1e-6)
            win = Window(int(c0), int(r0), int(c1 - c0), int(r1 - r0))
            if not scene.parts:
                win = win.intersection(Window(0, 0, src.width, src.height))
            return Grid(own_crs, src.window_transform(win), (int(win.height), int(win.width)))
        r = float(resolution)
        left, bottom = np.floor(box[0] / r) * r, np.floor(box[1] / r) * r
        right, top = np.ceil(box[2] / r) * r, np.ceil(box[3] / r) * r
        shape = (int(round((top - bottom) / r)), int(round((right - left) / r)))
        return Grid(target.to_wkt(), Affine(r, 0, left, 0, -r, top), shape)


def _union(a, b) -> tuple[float, float, float, float]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _to_grey(data: np.ndarray, src) -> np.ndarray:
    """Single band: band 1, or the mean of R, G, B for colour images."""
    if data.shape[0] >= 3 and src.colorinterp[:3] == (
        ColorInterp.red,
        ColorInterp.green,
        ColorInterp.blue,
    ):
        return data[:3].mean(axis=0)
    return data[0]


def _window_on(src, grid: Grid) -> Window | None:
    """The window of ``src`` that is exactly ``grid`` (same CRS, pixel size and lattice)."""
    if (src.crs.to_wkt() if src.crs else None) != grid.crs:
        return None
    if not np.allclose(tuple(src.transform)[:6:4], tuple(grid.transform)[:6:4]):
        return None
    col_off = (grid.transform.c - src.transform.c) / src.transform.a
    row_off = (grid.transform.f - src.transform.f) / src.transform.e
    if abs(col_off - round(col_off)) > 1e-3 or abs(row_off - round(row_off)) > 1e-3:
        return None
    return Window(round(col_off), round(row_off), grid.shape[1], grid.shape[0])


def is_on_grid(scene: Scene, grid: Grid) -> bool:
    """True when ``scene`` can be read on ``grid`` without resampling."""
    with _open(scene) as src:
        return _window_on(src, grid) is not None


def scene_bounds(scene: Scene, crs: str | None) -> tuple[float, float, float, float]:
    """Bounds of ``scene`` (left, bottom, right, top) in ``crs`` (its own if None)."""
    with _open(scene) as src:
        left, bottom, right, top = src.bounds
        box = (min(left, right), min(bottom, top), max(left, right), max(bottom, top))
        if crs is None or src.crs is None:
            return box
        return transform_bounds(src.crs, crs, *box, densify_pts=21)


class CloudyDateError(InputError):
    """A whole date is judged cloudy (the B09 rule of the original TIO)."""


def read_on_grid(
    scene: Scene,
    grid: Grid,
    resampling: Resampling,
    *,
    mask_clouds: bool = True,
    mask_snow: bool = False,
    b09_threshold: float = 1200.0,
) -> np.ndarray:
    """``scene`` as a float32 array on ``grid`` (NaN = no data or cloud), resampled if needed.

    A scene already on the grid's pixel lattice is read through a window (blocks
    outside the file are NaN); any other is warped through a GDAL WarpedVRT with
    ``resampling``. Colour images become grey (mean of R, G, B).

    With ``mask_clouds``, a catalogue scene's SCL asset (``scene.mask_path``), or a
    Sentinel-2 product's cloud mask (SCL for L2A, else
    MSK_CLASSI, else the GML cloud mask; see :mod:`tio.cloudmask`) sets its cloudy
    pixels to NaN (snow too with ``mask_snow``). A product without any cloud mask
    falls back on the original TIO rule: when the mean of band B09 over the grid is
    above ``b09_threshold`` the date is cloudy and :class:`CloudyDateError` is raised.
    The GDAL mask band of other rasters (a cloud mask stored with the image) is
    always honoured. Pixels this scene lacks are taken from ``scene.parts`` (other
    tiles of the same acquisition), in order.
    """
    values = _read_values(scene, grid, resampling)
    product = scene.product
    if mask_clouds and product is None and scene.mask_path:
        from .cloudmask import scl_mask

        values[scl_mask(scene.mask_path, grid, snow=mask_snow)] = np.nan
        log.debug("%s: cloud mask from %s", scene.source, scene.mask_path)
    if mask_clouds and product is not None:
        from .cloudmask import b09_cloudy, cloud_mask

        found = cloud_mask(product, grid, snow=mask_snow)
        if found is not None:
            values[found[0]] = np.nan
            log.debug("%s: cloud mask from %s", scene.source, found[1])
        else:
            try:
                cloudy, mean = b09_cloudy(product, grid, threshold=b09_threshold)
            except InputError as exc:
                log.warning("%s: no cloud mask and no B09 to judge clouds (%s)", scene.source, exc)
            else:
                if cloudy:
                    raise CloudyDateError(
                        f"{scene.source}: cloudy by the B09 rule (mean {mean:.0f} above "
                        f"input.b09_threshold = {b09_threshold:g})"
                    )
    for part in scene.parts:  # other tiles of the acquisition fill what this one lacks
        holes = np.isnan(values)
        if not holes.any():
            break
        more = read_on_grid(
            part,
            grid,
            resampling,
            mask_clouds=mask_clouds,
            mask_snow=mask_snow,
            b09_threshold=b09_threshold,
        )
        values[holes] = more[holes]
        log.debug("%s: %d pixels from tile %s", scene.source, int(holes.sum()), part.tile)
    return values


def _read_values(scene: Scene, grid: Grid, resampling: Resampling) -> np.ndarray:
    with _open(scene) as src:
        nodata = src.nodata if src.nodata is not None else scene.nodata
        if nodata is None and src.dtypes[0] == "uint16":
            nodata = 0.0  # fill value of Sentinel-2 and Landsat digital numbers
        win = _window_on(src, grid)
        bands = [1, 2, 3] if src.count >= 3 else [1]
        if win is not None:
            data = src.read(bands, window=win, boundless=True, masked=True, fill_value=0)
            data = data.astype("float32").filled(np.nan)
        else:
            if src.crs is None or grid.crs is None:
                raise InputError(
                    f"{scene.source} is not on the common grid and one of them "
                    "has no georeferencing: cannot resample"
                )
            with WarpedVRT(
                src,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.shape[1],
                height=grid.shape[0],
                resampling=resampling,
                src_nodata=nodata,
                nodata=nodata if nodata is not None else 0,
                add_alpha=nodata is None,
            ) as vrt:
                data = vrt.read(bands, masked=True).astype("float32").filled(np.nan)
            log.info("%s resampled onto the common grid (%s)", scene.source, resampling.name)
        if nodata is not None:
            data[data == nodata] = np.nan
        return _to_grey(data, src)


def boxes_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two (left, bottom, right, top) boxes share some area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _unusable(values: np.ndarray, max_cloud: float) -> tuple[float, str | None]:
    """Share of unusable pixels of a date on the grid, and why it is dropped (or None)."""
    share = 1.0 - float(np.isfinite(values).mean())
    if share >= 1.0:
        return share, "no valid pixel over the area (elsewhere, or all no data)"
    if share > max_cloud:
        return share, (
            f"{100 * share:.0f} % of the area is cloud or no data "
            f"(more than input.max_cloud = {max_cloud:g})"
        )
    return share, None


def build_stack(
    scenes: Sequence[Scene],
    *,
    aoi=None,
    resampling: str = "cubic",
    crs: str | None = None,
    resolution: float | None = None,
    max_cloud: float = 1.0,
    pixel_units: bool = True,
    mask_snow: bool = False,
    b09_threshold: float = 1200.0,
    progress=None,
    store=None,
) -> xr.Dataset:
    """Read ``scenes`` onto one grid (the first scene's, cut to ``aoi``).

    Parameters
    ----------
    scenes
        From :func:`tio.ingest.find_scenes`, sorted by date.
    aoi, crs, resolution
        Area of interest (lon/lat box, GeoJSON file, WKT) and output grid: see
        :func:`grid_for`. None: the whole first image on its own grid.
    resampling
        Name of a rasterio resampler used for scenes on another grid.
    max_cloud
        A date whose share of unusable pixels (cloud, shadow, no data) over the grid
        is above this is dropped.
    pixel_units
        Accept images without georeferencing (processed in pixels).
    mask_snow, b09_threshold
        Cloud masking of Sentinel-2 products: see :func:`read_on_grid`.
    progress
        Optional callable called once per scene read (for progress bars).
    store
        A Zarr folder to write the stack to, one date at a time (memory holds one
        image, not the stack), under a temporary name renamed when complete; the
        stack returned is then read lazily from it (:func:`open_stack`).

    Scenes that cannot be read, hold no valid pixel or are too cloudy are dropped
    with a warning naming the file and the reason (also in the ``dropped``
    attribute, one ``source: reason`` per line).

    Raises
    ------
    NoOverlapError
        The AOI is outside the first scene.
    InputError
        Fewer than two usable dates, or images without georeferencing and
        ``pixel_units`` false.
    """
    if not scenes:
        raise InputError("no scene to read")
    undated = [s.source for s in scenes if s.date is None]
    if undated:
        raise InputError(f"{undated[0]}: no acquisition date (needed to build a time series)")
    dropped: list[tuple[str, str]] = []
    grid = None
    for scene in scenes:  # the first readable scene defines the grid
        try:
            grid = grid_for(scene, aoi, crs=crs, resolution=resolution)
            break
        except InputError as exc:  # unreadable, or outside the area: the next one may do
            dropped.append((scene.source, str(exc)))
    if grid is None:
        reasons = "; ".join(r for _, r in dropped)
        if all("outside" in r for _, r in dropped):
            raise NoOverlapError(f"no scene covers the area of interest: {reasons}")
        raise InputError(f"no scene can be read: {reasons}")
    if grid.crs is None and not pixel_units:
        raise InputError(
            f"{scenes[0].source} has no georeferencing: pass --pixel-units (input.pixel_units) "
            "to process such images in pixel units"
        )
    rs = Resampling[resampling]
    x, y = coords_from_transform(tuple(grid.transform), grid.shape)
    writer = None if store is None else _ZarrStackWriter(store, len(scenes), x, y)
    cube = (
        np.empty((len(scenes), *grid.shape), dtype="float32")
        if writer is None
        else np.empty((1, *grid.shape), dtype="float32")
    )
    kept: list[int] = []
    for i, scene in enumerate(scenes):
        if any(src == scene.source for src, _ in dropped):
            continue
        k = 0 if writer else len(kept)
        try:
            cube[k] = read_on_grid(
                scene, grid, rs, mask_snow=mask_snow, b09_threshold=b09_threshold
            )
        except (RasterioError, InputError) as exc:
            dropped.append((scene.source, f"cannot be read: {exc}"))
            continue
        finally:
            if progress:
                progress()
        _, reason = _unusable(cube[k], max_cloud)
        if reason:
            dropped.append((scene.source, reason))
        else:
            if writer:
                writer.write(len(kept), cube[0])
            kept.append(i)
    for source, reason in dropped:
        log.warning("%s dropped: %s", source, reason)
    if len(kept) < 2:
        raise InputError(
            f"need at least 2 usable dates, {len(kept)} left: "
            + "; ".join(f"{s}: {r}" for s, r in dropped)
        )
    scenes = [scenes[i] for i in kept]
    attrs = {
        "crs": grid.crs,
        "transform": list(tuple(grid.transform)[:6]),
        "resampling": resampling,
        "grid": grid.describe(),
        "dropped": "\n".join(f"{s}: {r}" for s, r in dropped),
    }
    if writer:
        writer.finish(scenes, attrs)
        return open_stack(store)
    cube = cube[: len(kept)]
    times = np.array([np.datetime64(s.date.isoformat(), "ns") for s in scenes])
    return xr.Dataset(
        {
            "image": (("time", "y", "x"), cube, {"long_name": "pixel values (digital numbers)"}),
            "mask": (
                ("time", "y", "x"),
                (~np.isfinite(cube)).astype("uint8"),
                {"long_name": "1 = unusable (no data, cloud, cloud shadow)"},
            ),
        },
        coords={"time": times, "x": x, "y": y, "source": ("time", [s.source for s in scenes])},
        attrs=attrs,
    )


STACK_CHUNK = 1024  # pixels: side of the spatial chunks of a Zarr stack


class _ZarrStackWriter:
    """A Zarr stack written one date at a time into a temporary folder."""

    def __init__(self, store, n: int, x, y):
        import dask.array as da

        self.path = Path(store)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        shape = (n, y.size, x.size)
        chunks = (1, min(STACK_CHUNK, y.size), min(STACK_CHUNK, x.size))
        template = xr.Dataset(
            {
                "image": (
                    ("time", "y", "x"),
                    da.zeros(shape, dtype="float32", chunks=chunks),
                    {"long_name": "pixel values (digital numbers)"},
                ),
                "mask": (
                    ("time", "y", "x"),
                    da.zeros(shape, dtype="uint8", chunks=chunks),
                    {"long_name": "1 = unusable (no data, cloud, cloud shadow)"},
                ),
            },
            coords={"x": x, "y": y},
        )
        try:
            for old in self.path.parent.glob(f".{self.path.name}.tmp*"):  # of a killed run
                shutil.rmtree(old, ignore_errors=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            template.to_zarr(self.tmp, compute=False, mode="w", consolidated=False, zarr_format=2)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write(self, k: int, values: np.ndarray) -> None:

        ds = xr.Dataset(
            {
                "image": (("time", "y", "x"), values[None]),
                "mask": (("time", "y", "x"), (~np.isfinite(values[None])).astype("uint8")),
            }
        )
        try:
            ds.to_zarr(
                self.tmp, region={"time": slice(k, k + 1)}, consolidated=False, zarr_format=2
            )
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def finish(self, scenes, attrs: dict) -> None:
        import zarr

        try:
            group = zarr.open_group(self.tmp, mode="r+")
            group.attrs.update(
                {
                    **attrs,
                    "crs": attrs["crs"] or "",
                    "dates": [s.date.isoformat() for s in scenes],
                    "sources": [s.source for s in scenes],
                }
            )
            if self.path.exists():
                shutil.rmtree(self.path)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def open_stack(path) -> xr.Dataset:
    """A stack written by :func:`build_stack` with ``store=``: lazy (dask) arrays."""
    ds = xr.open_zarr(path, consolidated=False, zarr_format=2)
    attrs = dict(ds.attrs)
    dates, sources = attrs.pop("dates"), attrs.pop("sources")
    ds = ds.isel(time=slice(0, len(dates))).assign_coords(
        time=np.array([np.datetime64(d, "ns") for d in dates]),
        source=("time", list(sources)),
    )
    attrs["crs"] = attrs.get("crs") or None
    attrs["transform"] = [float(v) for v in attrs["transform"]]
    ds.attrs = attrs
    return ds


def save_stack(stack: xr.Dataset, path) -> None:
    """Write a stack to NetCDF (temporary name, then renamed)."""
    from .raster import atomic_path

    ds = stack.copy()
    ds.attrs = {**stack.attrs, "crs": stack.attrs.get("crs") or ""}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding={"image": {"zlib": True, "complevel": 1}})


def load_stack(path) -> xr.Dataset:
    """Read a stack written by :func:`save_stack` into memory."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        stack = ds.load()
    stack.attrs["crs"] = stack.attrs.get("crs") or None
    stack.attrs["transform"] = [float(v) for v in np.atleast_1d(stack.attrs["transform"])]
    return stack


def survey_area(cfg, *, read_pixels: bool = True) -> list[dict]:
    """One row per input for ``tio scenes``: metadata, unusable share over the area, fate.

    ``cfg`` is an :class:`tio.config.InputConfig`. Rows have ``source``, ``date`` (ISO
    or None), ``sensor``, ``tile``, ``orbit``, ``cloud_cover`` (metadata, percent),
    ``unusable`` (share of cloud or no data on the output grid, or None), ``kept``
    and ``reason``. Nothing is written.
    """
    from .ingest import survey

    found = survey(cfg.paths, band=cfg.band, start=cfg.start, end=cfg.end, orbit=cfg.orbit)
    grid = None
    rows = []
    for f in found:
        s = f.scene
        row = {
            "source": f.source,
            "date": s.date.isoformat() if s and s.date else None,
            "sensor": s.sensor if s else "",
            "tile": s.tile if s else "",
            "orbit": s.orbit if s else None,
            "cloud_cover": s.cloud_cover if s else None,
            "unusable": None,
            "kept": f.kept,
            "reason": f.reason,
        }
        if f.kept and read_pixels:
            try:
                if grid is None:
                    grid = grid_for(s, cfg.aoi, crs=cfg.crs, resolution=cfg.resolution)
                values = read_on_grid(
                    s,
                    grid,
                    Resampling[cfg.resampling],
                    mask_snow=cfg.mask_snow,
                    b09_threshold=cfg.b09_threshold,
                )
                row["unusable"], reason = _unusable(values, cfg.max_cloud)
                if reason:
                    row["kept"] = False
                    row["reason"] = reason
            except (InputError, RasterioError) as exc:
                row["kept"] = False
                row["reason"] = str(exc)
        rows.append(row)
    return rows
