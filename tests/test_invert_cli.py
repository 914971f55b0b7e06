"""`tio invert`: the command-line contract, end to end from `tio correlate`."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner

from tio.cli.main import cli
from tio.raster import read_pair_stack, write_pair

# content displacement of each date, whole pixels (+col = east, +row = south) of a
# Landsat-8 pan crop (15 m pixels)
DATES = ["20150804", "20150820", "20150905"]
SHIFTS = [(0, 0), (1, -1), (3, -2)]  # (d_col, d_row)


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def moved_images(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("moved")
    with rasterio.open(shared_data / "landsat8_pan_p020r039" / "l8_B8.tif") as src:
        big = src.read(1, window=rasterio.windows.Window(300, 300, 300, 300))
        t = src.window_transform(rasterio.windows.Window(320, 320, 256, 256))
        profile = src.profile | {"driver": "GTiff", "width": 256, "height": 256, "transform": t}
    paths = []
    for date, (dc, dr) in zip(DATES, SHIFTS, strict=True):
        data = big[20 - dr : 276 - dr, 20 - dc : 276 - dc]
        path = tmp / f"l8_{date}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        paths.append(path)
    return paths


def test_signs_preserved_from_correlate_to_invert(tmp_path, moved_images):
    pairs = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        out = tmp_path / "pairs" / f"pair_{a}{b}.tif"  # dates only in the tags
        res = _run("correlate", moved_images[a], moved_images[b], "-o", out)
        assert res.exit_code == 0, res.output
        pairs.append(out)
    res = _run("invert", *pairs, "-o", tmp_path / "series")
    assert res.exit_code == 0, res.output
    series = tmp_path / "series"
    iso = [dt.datetime.strptime(d, "%Y%m%d").date().isoformat() for d in DATES]
    expected_ew = [15.0 * dc for dc, _ in SHIFTS]  # metres, + east
    expected_ns = [-15.0 * dr for _, dr in SHIFTS]  # metres, + north (rows grow south)
    for comp, expected in (("ew", expected_ew), ("ns", expected_ns)):
        with rasterio.open(series / f"cumulative_{comp}.tif") as src:
            assert src.count == 3 and src.dtypes[0] == "float32"
            assert list(src.descriptions) == iso
            data = src.read()
        assert np.all(data[0][np.isfinite(data[0])] == 0)
        for band, value in zip(data, expected, strict=True):
            assert np.nanmedian(band) == pytest.approx(value, abs=0.5)
        with rasterio.open(series / f"cumulative_{comp}_sigma.tif") as src:
            assert src.count == 3
    with rasterio.open(series / "velocity.tif") as src:
        v = src.read()
        assert src.count == 6 and "east" in src.descriptions[0]
    years = (dt.date(2015, 9, 5) - dt.date(2015, 8, 4)).days / 365.25
    assert np.nanmedian(v[0]) > 0.8 * 45 / years and np.nanmedian(v[1]) > 0.8 * 30 / years
    for name in ("rms_date_ew.tif", "rms_date_ns.tif", "n_pairs.tif", "smoothed.tif"):
        assert (series / name).is_file(), name
    with rasterio.open(series / "n_pairs.tif") as src:
        assert np.nanmax(src.read(1)) == 3
    assert len((series / "rms_pair.csv").read_text().splitlines()) == 4
    ts = xr.open_dataset(series / "timeseries.nc")
    for v in ("cumulative_ew", "sigma_ns", "velocity_ew", "rms_date_ew", "residual_ew", "smoothed"):
        assert v in ts
    assert np.nanmedian(ts["cumulative_ns"].values[-1]) == pytest.approx(30.0, abs=0.5)
    ts.close()


def _synthetic_pair(path, d1, d2, shape=(6, 7), value=1.0, transform=None):
    ds = xr.Dataset(
        {
            "ew": (("y", "x"), np.full(shape, value, "float32")),
            "ns": (("y", "x"), np.full(shape, -value, "float32")),
            "score": (("y", "x"), np.full(shape, 0.9, "float32")),
        },
        attrs={
            "crs": "EPSG:32632",
            "transform": transform or (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
        },
    )
    return write_pair(path, ds, d1, d2)


def test_dates_from_file_names_both_forms(tmp_path):
    a = _synthetic_pair(tmp_path / "p_20200101_20200201.tif", None, None, value=1.0)
    b = _synthetic_pair(tmp_path / "p_2020-02-01_2020-03-01.tif", None, None, value=2.0)
    c = _synthetic_pair(tmp_path / "p_20200101_20200301.tif", None, None, value=3.0)
    cube = read_pair_stack([a, b, c])
    assert [str(d)[:10] for d in cube["date2"].values] == ["2020-02-01", "2020-03-01"] * 1 + [
        "2020-03-01"
    ]
    res = _run("invert", tmp_path, "-o", tmp_path / "out", "--pair-weighting", "none")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "out" / "cumulative_ew.tif") as src:
        assert list(src.descriptions) == ["2020-01-01", "2020-02-01", "2020-03-01"]
        assert np.allclose(src.read()[:, 0, 0], [0.0, 1.0, 3.0], atol=1e-5)
    with rasterio.open(tmp_path / "out" / "cumulative_ns.tif") as src:
        assert np.allclose(src.read()[:, 0, 0], [0.0, -1.0, -3.0], atol=1e-5)


def test_pair_on_another_grid_is_named(tmp_path):
    a = _synthetic_pair(tmp_path / "a.tif", dt.date(2020, 1, 1), dt.date(2020, 2, 1))
    b = _synthetic_pair(
        tmp_path / "b.tif",
        dt.date(2020, 2, 1),
        dt.date(2020, 3, 1),
        transform=(10.0, 0.0, 500010.0, 0.0, -10.0, 5000000.0),
    )
    c = _synthetic_pair(tmp_path / "c.tif", dt.date(2020, 2, 1), dt.date(2020, 3, 1), (5, 7))
    for bad in (b, c):
        res = _run("invert", a, bad, "-o", tmp_path / "out")
        assert res.exit_code == 1
        assert bad.name in res.output and "one grid" in res.output


def test_pair_without_dates_is_an_error(tmp_path):
    a = _synthetic_pair(tmp_path / "nodate.tif", None, None)
    res = _run("invert", a, "-o", tmp_path / "out")
    assert res.exit_code == 1 and "nodate.tif" in res.output and "YYYYMMDD" in res.output


def test_bad_option_is_a_configuration_error(tmp_path):
    a = _synthetic_pair(tmp_path / "a.tif", dt.date(2020, 1, 1), dt.date(2020, 2, 1))
    res = _run("invert", a, "-o", tmp_path / "out", "--residual-scale", "-1")
    assert res.exit_code == 2 and "residual_scale" in res.output
    res = _run("invert", a, "-o", tmp_path / "out", "--set", "correlation.window=16")
    assert res.exit_code == 2 and "inversion" in res.output


def test_regularisation_and_outlier_options_reach_the_inversion(tmp_path):
    a = _synthetic_pair(tmp_path / "p_20200101_20200201.tif", None, None, value=1.0)
    b = _synthetic_pair(tmp_path / "p_20200201_20200301.tif", None, None, value=2.0)
    c = _synthetic_pair(tmp_path / "p_20200101_20200301.tif", None, None, value=3.0)
    args = ("--regularisation", "0.5", "--regularisation-mode", "solve", "--separate-outliers")
    res = _run("invert", a, b, c, "-o", tmp_path / "out", *args)
    assert res.exit_code == 0, res.output
    with xr.open_dataset(tmp_path / "out" / "timeseries.nc") as ts:
        assert ts.attrs["tio_inversion_regularisation"] == 0.5
        assert ts.attrs["tio_inversion_regularisation_mode"] == "solve"
        assert ts.attrs["tio_inversion_joint_outliers"] == 0
    res = _run("invert", a, b, c, "-o", tmp_path / "out1")
    assert res.exit_code == 0, res.output
    with xr.open_dataset(tmp_path / "out1" / "timeseries.nc") as ts:
        assert ts.attrs["tio_inversion_joint_outliers"] == 1
    res = _run("invert", a, "-o", tmp_path / "out2", "--regularisation", "-1")
    assert res.exit_code == 2 and "regularisation" in res.output
