"""Write the products of a run: GeoTIFFs (COG), one CF NetCDF cube, CSV tables.

Input is the Dataset returned by :func:`tio.inversion.invert`. Every raster keeps
the CRS and the geotransform of the pair maps (one value every ``step`` image
pixels, placed at window centres), float32 with NaN as nodata, one band per
date (band description = ISO date) or per quantity. Each file is written under
a temporary name and renamed when complete.

==========================  ==========================================================
file                        content
==========================  ==========================================================
cumulative_ew.tif           cumulative east-west displacement, m (+ east), band = date
cumulative_ns.tif           cumulative north-south displacement, m (+ north)
cumulative_magnitude.tif    horizontal magnitude, m
cumulative_ew_sigma.tif     1-sigma uncertainty of cumulative_ew, m
cumulative_ns_sigma.tif     1-sigma uncertainty of cumulative_ns, m
velocity.tif                mean velocity EW, NS, magnitude and their 1-sigma, m/year
rms_date_ew.tif, _ns.tif    RMS of the residuals of the pairs through each date, m
n_pairs.tif                 valid pairs, pairs used EW and NS (valid minus rejected)
smoothed.tif                1 where a date is placed by the temporal smoothing only
rms_pair.csv                spatial RMS of each pair's residuals, m
timeseries.nc               all of the above in one CF-1.8 NetCDF cube (x, y, time)
==========================  ==========================================================
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
from pathlib import Path

import numpy as np
import xarray as xr

from . import __version__
from .raster import GeoTIFFWriter, atomic_path

__all__ = ["magnitude", "write_products", "write_netcdf"]


def _iso(times) -> list[str]:
    return [str(np.datetime_as_string(t, unit="D")) for t in np.asarray(times)]


def magnitude(ew: np.ndarray, ns: np.ndarray, sew=None, sns=None):
    """Horizontal magnitude and (if sigmas given) its linearised 1-sigma."""
    m = np.hypot(ew, ns)
    if sew is None:
        return m
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.sqrt((ew * sew) ** 2 + (ns * sns) ** 2) / m
    s = np.where(m > 0, s, np.hypot(sew, sns) / np.sqrt(2))
    return m, s


def _row_blocks(ts: xr.Dataset, per_row: int) -> list[tuple[int, int]]:
    """Bands of rows to read ``ts`` by: the chunks of its cumulative displacement along
    y (a Zarr or dask-backed time series) or about 2**22 values (``per_row`` per row)."""
    ny = ts.sizes["y"]
    var = ts["cumulative_ew"]
    chunks = var.chunks[var.dims.index("y")] if var.chunks else None
    if chunks:
        edges = np.cumsum((0, *chunks))
    else:
        rows = max(1, (1 << 22) // max(per_row, 1))
        edges = np.append(np.arange(0, ny, rows), ny)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def write_products(ts: xr.Dataset, out_dir: str | Path, *, netcdf: bool = True) -> list[Path]:
    """Write every product of ``ts`` into ``out_dir``; returns the paths written.

    ``ts`` may be lazy (the Zarr time series of :func:`tio.compute.invert_blocks`):
    it is read by bands of rows, every GeoTIFF written band of rows by band of
    rows and the NetCDF chunk by chunk, so memory holds one band of rows of the
    time series (plus the writers' buffers), not the whole of it.
    """
    import dask

    out = Path(out_dir)
    geo = dict(transform=ts.attrs["transform"], crs=ts.attrs.get("crs"))
    dates = _iso(ts["time"].values)
    units = ts.attrs.get("units", "m")
    n_dates = ts.sizes["time"]
    d = units
    rasters = {
        "cumulative_ew.tif": (
            dates,
            {"TIO_QUANTITY": f"cumulative east-west displacement ({d}, positive east)"},
        ),
        "cumulative_ns.tif": (
            dates,
            {"TIO_QUANTITY": f"cumulative north-south displacement ({d}, positive north)"},
        ),
        "cumulative_magnitude.tif": (
            dates,
            {"TIO_QUANTITY": f"cumulative horizontal displacement magnitude ({d})"},
        ),
        "cumulative_ew_sigma.tif": (
            dates,
            {"TIO_QUANTITY": f"1-sigma uncertainty of cumulative east-west displacement ({d})"},
        ),
        "cumulative_ns_sigma.tif": (
            dates,
            {"TIO_QUANTITY": f"1-sigma uncertainty of cumulative north-south displacement ({d})"},
        ),
        "velocity.tif": (
            [
                f"velocity east-west ({d}/year, positive east)",
                f"velocity north-south ({d}/year, positive north)",
                f"velocity magnitude ({d}/year)",
                f"1-sigma velocity east-west ({d}/year)",
                f"1-sigma velocity north-south ({d}/year)",
                f"1-sigma velocity magnitude ({d}/year)",
            ],
            {"TIO_PERIOD": f"{dates[0]}/{dates[-1]}"},
        ),
        "rms_date_ew.tif": (
            dates,
            {"TIO_QUANTITY": f"RMS of east-west residuals of the pairs through each date ({d})"},
        ),
        "rms_date_ns.tif": (
            dates,
            {"TIO_QUANTITY": f"RMS of north-south residuals of the pairs through each date ({d})"},
        ),
        "n_pairs.tif": (
            [
                "number of valid pairs (EW and NS finite)",
                "number of pairs used, east-west (valid minus rejected gross outliers)",
                "number of pairs used, north-south (valid minus rejected gross outliers)",
            ],
            {},
        ),
        "smoothed.tif": (
            dates,
            {
                "TIO_QUANTITY": "1 where the date is tied to the rest of the series only by "
                "the temporal smoothing (network disconnected at that pixel), 0 otherwise"
            },
        ),
    }

    def block(r0: int, r1: int) -> dict[str, np.ndarray]:
        """Every raster's values on rows ``r0:r1``."""
        b = ts.isel(y=slice(r0, r1))

        def get(name):
            return np.asarray(b[name].values)

        ew, ns = get("cumulative_ew"), get("cumulative_ns")
        sew, sns = get("sigma_ew"), get("sigma_ns")
        mag, smag = magnitude(ew, ns, sew, sns)
        vew, vns = get("velocity_ew"), get("velocity_ns")
        vsew, vsns = get("velocity_sigma_ew"), get("velocity_sigma_ns")
        vmag, svmag = magnitude(vew, vns, vsew, vsns)
        n_valid = get("n_pairs").astype("float32")
        inverted = np.isfinite(ew).any(axis=0)
        used = [np.where(inverted, n_valid - get(f"n_outliers_{c}"), np.nan) for c in ("ew", "ns")]
        return {
            "cumulative_ew.tif": ew,
            "cumulative_ns.tif": ns,
            "cumulative_magnitude.tif": mag,
            "cumulative_ew_sigma.tif": sew,
            "cumulative_ns_sigma.tif": sns,
            "velocity.tif": np.stack([vew, vns, vmag, vsew, vsns, svmag]),
            "rms_date_ew.tif": get("rms_date_ew"),
            "rms_date_ns.tif": get("rms_date_ns"),
            "n_pairs.tif": np.stack([n_valid, *used]),
            "smoothed.tif": np.where(inverted, get("smoothed").astype("float32"), np.nan),
        }

    # a lazy time series is read here, in this process, one band of rows at a time
    with dask.config.set(scheduler="synchronous"), contextlib.ExitStack() as files:
        writers = {
            name: files.enter_context(
                GeoTIFFWriter(
                    out / name,
                    count=len(descs),
                    shape=(ts.sizes["y"], ts.sizes["x"]),
                    descriptions=descs,
                    tags=tags,
                    **geo,
                )
            )
            for name, (descs, tags) in rasters.items()
        }
        for r0, r1 in _row_blocks(ts, (6 * n_dates + 9) * ts.sizes["x"]):
            for name, values in block(r0, r1).items():
                writers[name].write(values, r0)
    written = [out / name for name in rasters]

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["pair", "date1", "date2", "days", f"rms_ew_{units}", f"rms_ns_{units}"])
    for k in range(ts.sizes["pair"]):
        d1 = _iso([ts["date1"].values[k]])[0]
        d2 = _iso([ts["date2"].values[k]])[0]
        days = (dt.date.fromisoformat(d2) - dt.date.fromisoformat(d1)).days
        w.writerow(
            [
                f"{d1}_{d2}",
                d1,
                d2,
                days,
                f"{ts['rms_pair_ew'].values[k]:.4f}",
                f"{ts['rms_pair_ns'].values[k]:.4f}",
            ]
        )
    with atomic_path(out / "rms_pair.csv") as tmp:
        tmp.write_text(buf.getvalue())
    written.append(out / "rms_pair.csv")
    if netcdf:
        written.append(write_netcdf(ts, out / "timeseries.nc"))
    return written


_CF = {
    "cumulative_ew": (
        "cumulative east-west displacement since the first date, positive east",
        None,
    ),
    "cumulative_ns": (
        "cumulative north-south displacement since the first date, positive north",
        None,
    ),
    "sigma_ew": ("1-sigma uncertainty of cumulative_ew", None),
    "sigma_ns": ("1-sigma uncertainty of cumulative_ns", None),
    "velocity_ew": ("mean east-west velocity, positive east", None),
    "velocity_ns": ("mean north-south velocity, positive north", None),
}


def write_netcdf(ts: xr.Dataset, path: str | Path) -> Path:
    """Write ``ts`` as a CF-1.8 NetCDF-4 cube with a ``spatial_ref`` grid mapping."""
    ds = ts.copy()
    crs = ds.attrs.get("crs")
    attrs = {
        "Conventions": "CF-1.8",
        "title": "TIO displacement time series",
        "institution": "TIO",
        "source": f"tio {__version__}",
        "history": f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} created by tio {__version__}",
        "references": "Bontemps, Lacroix & Doin 2018, Remote Sensing of Environment 210:144-158",
    }
    for key, value in ts.attrs.items():
        if key in ("crs", "transform"):
            continue
        attrs[f"tio_{key}"] = value if isinstance(value, int | float | str) else str(value)
    ds.attrs = attrs
    if crs:
        from affine import Affine
        from pyproj import CRS

        gm = CRS.from_wkt(crs).to_cf()  # grid_mapping_name and its parameters, crs_wkt
        gm["spatial_ref"] = crs  # GDAL reads this one
        gm["GeoTransform"] = " ".join(str(v) for v in Affine(*ts.attrs["transform"][:6]).to_gdal())
        ds["spatial_ref"] = xr.DataArray(np.int32(0), attrs=gm)
        ds["x"].attrs.update(
            standard_name="projection_x_coordinate",
            long_name="x coordinate of pixel centre",
            units="m",
        )
        ds["y"].attrs.update(
            standard_name="projection_y_coordinate",
            long_name="y coordinate of pixel centre",
            units="m",
        )
        for name, var in ds.data_vars.items():
            if name != "spatial_ref" and {"x", "y"} <= set(var.dims):
                var.attrs["grid_mapping"] = "spatial_ref"
    ds["time"].attrs.update(standard_name="time", long_name="acquisition date")
    for k, label in (("date1", "first"), ("date2", "second")):
        if k in ds.coords:
            ds[k].attrs["long_name"] = f"{label} acquisition date of the pair"
    if "pair" in ds.coords:
        ds["pair"].attrs["long_name"] = "pair of acquisition dates (YYYYMMDD_YYYYMMDD)"
    units = ts.attrs.get("units", "m")
    if "cumulative_ew" in ds and "cumulative_magnitude" not in ds:
        ds["cumulative_magnitude"] = np.hypot(
            ds["cumulative_ew"], ds["cumulative_ns"]
        ).assign_attrs(units=units, long_name="cumulative horizontal displacement magnitude")
    if "velocity_ew" in ds and "velocity_magnitude" not in ds:
        ds["velocity_magnitude"] = np.hypot(ds["velocity_ew"], ds["velocity_ns"]).assign_attrs(
            units=f"{units}/year", long_name="mean horizontal velocity magnitude"
        )
    for name in ("cumulative_magnitude", "velocity_magnitude"):
        if name in ds and crs:
            ds[name].attrs["grid_mapping"] = "spatial_ref"
    for name, (long_name, std) in _CF.items():
        if name in ds:
            ds[name].attrs["long_name"] = long_name
            if std:
                ds[name].attrs["standard_name"] = std
    for name in list(ds.data_vars):
        if ds[name].dtype == bool:
            ds[name] = ds[name].astype("uint8")
            ds[name].attrs.update(flag_values=np.array([0, 1], "uint8"), flag_meanings="false true")
    encoding = {
        name: {"zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan)}
        for name, v in ds.data_vars.items()
        if v.dtype == np.float32
    }
    encoding["time"] = {
        "units": "days since 1970-01-01",
        "calendar": "proleptic_gregorian",
        "dtype": "float64",
    }
    for k in ("date1", "date2"):
        if k in ds.coords:
            encoding[k] = {
                "_FillValue": None,
                "units": "days since 1970-01-01",
                "calendar": "proleptic_gregorian",
                "dtype": "float64",
            }
    path = Path(path)
    import dask

    # a dask-backed (lazy) time series is computed and written chunk by chunk, here
    with atomic_path(path) as tmp, dask.config.set(scheduler="synchronous"):
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
    return path
