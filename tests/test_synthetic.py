"""Tests of the synthetic-scene generator (tio.synthetic)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tio import synthetic
from tio.errors import ConfigError
from tio.synthetic import SyntheticScene, make_scene

PIX = 10.0


# ----------------------------------------------------------------------------- helpers


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1).astype(np.float64)


def _phase_correlation(ref: np.ndarray, sec: np.ndarray) -> tuple[float, float]:
    """Shift (rows, cols) of the content of ``sec`` relative to ``ref`` (same-size patches).

    Hann-windowed phase correlation with a Gaussian weighting of the spectrum (so the
    peak is Gaussian-shaped), integer peak and a parabola fitted to the log of the peak.
    """
    n_r, n_c = ref.shape
    win = np.outer(np.hanning(n_r), np.hanning(n_c))
    fa = np.fft.fft2((ref - ref.mean()) * win)
    fb = np.fft.fft2((sec - sec.mean()) * win)
    cross = fb * np.conj(fa)
    cross /= np.abs(cross) + 1e-12
    fy = np.fft.fftfreq(n_r)[:, None]
    fx = np.fft.fftfreq(n_c)[None, :]
    cross *= np.exp(-(fx**2 + fy**2) / (2 * 0.12**2))
    corr = np.real(np.fft.ifft2(cross))
    pr, pc = np.unravel_index(np.argmax(corr), corr.shape)

    def refine(m: float, z: float, p: float) -> float:
        lm, lz, lp = (np.log(max(v, 1e-12)) for v in (m, z, p))
        den = lm - 2 * lz + lp
        return 0.0 if den == 0 else 0.5 * (lm - lp) / den

    dr = pr + refine(corr[pr - 1, pc], corr[pr, pc], corr[(pr + 1) % n_r, pc])
    dc = pc + refine(corr[pr, pc - 1], corr[pr, pc], corr[pr, (pc + 1) % n_c])
    if dr > n_r / 2:
        dr -= n_r
    if dc > n_c / 2:
        dc -= n_c
    return float(dr), float(dc)


def _measure(ref: np.ndarray, sec: np.ndarray, r: int, c: int, half: int) -> tuple[float, float]:
    """Shift (rows, cols) at (r, c): a first estimate, then again with the secondary
    window moved by the integer shift (removes the bias of a fixed window towards 0)."""
    d_row, d_col = _phase_correlation(ref[_patch(r, c, half)], sec[_patch(r, c, half)])
    ir, ic = round(d_row), round(d_col)
    d_row, d_col = _phase_correlation(ref[_patch(r, c, half)], sec[_patch(r + ir, c + ic, half)])
    return d_row + ir, d_col + ic


def _hann_mean(values: np.ndarray) -> float:
    win = np.outer(np.hanning(values.shape[0]), np.hanning(values.shape[1])) ** 2
    return float((values * win).sum() / win.sum())


def _patch(r: int, c: int, half: int) -> tuple[slice, slice]:
    return slice(r - half, r + half), slice(c - half, c + half)


def _stable_patch_centre(mask: np.ndarray, half: int) -> tuple[int, int]:
    """Centre of a patch that does not touch the landslide, away from the edges."""
    rows, cols = mask.shape
    for r in range(half + 10, rows - half - 10, 8):
        for c in range(half + 10, cols - half - 10, 8):
            if not mask[r - half - 8 : r + half + 8, c - half - 8 : c + half + 8].any():
                return r, c
    raise AssertionError("no stable patch found")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticScene, float]:
    """The default scene (400 x 400, 12 dates, 3 cloudy) and the time it took."""
    t0 = time.perf_counter()
    sc = make_scene(tmp_path_factory.mktemp("default"), seed=0)
    return sc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScene:
    """No misregistration, no noise, no clouds: only ground motion and radiometric change."""
    return make_scene(
        tmp_path_factory.mktemp("clean"),
        shape=(480, 480),
        n_dates=4,
        seed=3,
        max_displacement=50.0,
        misregistration=0.0,
        noise=0.0,
        cloudy_dates=0,
    )


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScene:
    """Large misregistration, no noise, no clouds."""
    return make_scene(
        tmp_path_factory.mktemp("shifted"),
        shape=(256, 256),
        n_dates=4,
        seed=5,
        misregistration=15.0,
        noise=0.0,
        cloudy_dates=0,
    )


# ----------------------------------------------------------------------------- files


def test_files_dates_and_metadata(scene: tuple[SyntheticScene, float]) -> None:
    sc, _ = scene
    assert len(sc.paths) == len(sc.dates) == 12
    assert sc.shape == (400, 400)
    assert sc.crs == "EPSG:32632"
    assert sc.transform == (PIX, 0.0, 350000.0, 0.0, -PIX, 5100000.0)
    folder = sc.paths[0].parent
    assert sc.truth_path == folder / "truth.nc" and sc.truth_path.is_file()
    assert not list(folder.glob(".*")), "temporary files left behind"
    for path, date in zip(sc.paths, sc.dates, strict=True):
        assert path.name == f"S2_{date:%Y%m%d}.tif"
        with rasterio.open(path) as src:
            assert src.count == 1
            assert src.dtypes[0] == "uint16"
            assert (src.height, src.width) == sc.shape
            assert src.crs.to_epsg() == 32632
            assert tuple(src.transform)[:6] == sc.transform
            assert src.tags()["TIO_DATE"] == date.isoformat()
            assert src.descriptions[0]
            assert src.compression is not None and src.compression.name.lower() == "deflate"
            assert src.profile["tiled"]


def test_dates_irregular_on_revisit_grid(scene: tuple[SyntheticScene, float]) -> None:
    sc, _ = scene
    offsets = np.array([(d - sc.dates[0]).days for d in sc.dates])
    assert sc.dates[0] == dt.date(2021, 3, 1)
    assert np.all(np.diff(offsets) > 0)
    assert np.all(offsets % 5 == 0)
    assert 725 <= offsets[-1] <= 730
    assert len(set(np.diff(offsets).tolist())) > 3, "gaps should be irregular"


def test_digital_numbers_like_l1c(scene: tuple[SyntheticScene, float]) -> None:
    sc, _ = scene
    truth = sc.truth()
    for k, path in enumerate(sc.paths):
        if truth.cloud_mask[k].values.any():
            continue
        dn = _read(path)
        p1, p50, p99 = np.percentile(dn, [1, 50, 99])
        assert 250 < p1 < 1000 and 600 < p50 < 2500 and 1500 < p99 < 5000, (path, p1, p50, p99)
        # texture everywhere: every 32 x 32 window has contrast well above the noise
        blocks = dn[:384, :384].reshape(12, 32, 12, 32).std(axis=(1, 3))
        assert blocks.min() > 25.0


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kw = {"shape": (128, 128), "n_dates": 3, "cloudy_dates": 1}
    a = make_scene(tmp_path / "a", seed=7, **kw)
    b = make_scene(tmp_path / "b", seed=7, **kw)
    c = make_scene(tmp_path / "c", seed=8, **kw)
    assert a.dates == b.dates
    for pa, pb in zip(a.paths, b.paths, strict=True):
        np.testing.assert_array_equal(_read(pa), _read(pb))
    ta, tb, tc = a.truth(), b.truth(), c.truth()
    for name in ("cumulative_ew", "cumulative_ns", "misregistration_ew", "cloud_mask"):
        np.testing.assert_array_equal(ta[name].values, tb[name].values)
    assert not np.array_equal(_read(a.paths[0]), _read(c.paths[0]))
    assert not np.array_equal(ta.misregistration_ew.values, tc.misregistration_ew.values)


def test_a_new_scene_replaces_an_earlier_one_in_the_same_folder(tmp_path: Path) -> None:
    """``tio demo --seed 3`` after ``tio demo`` in one folder: one time series, not two."""
    kw = {"shape": (128, 128), "cloudy_dates": 0}
    first = make_scene(tmp_path, seed=7, n_dates=4, **kw)
    other = tmp_path / "notes.tif"  # not a scene image: left alone
    other.write_bytes(b"x")
    second = make_scene(tmp_path, seed=8, n_dates=3, **kw)
    assert set(first.dates) != set(second.dates)
    assert sorted(tmp_path.glob("S2_*.tif")) == sorted(second.paths)
    assert other.exists()
    assert second.truth().sizes["time"] == 3


# ----------------------------------------------------------------------------- truth


def test_truth_layout(scene: tuple[SyntheticScene, float]) -> None:
    sc, _ = scene
    t = sc.truth()
    assert t.cumulative_ew.dims == ("time", "y", "x")
    assert t.cloud_mask.dtype == np.uint8 and t.landslide_mask.dtype == np.uint8
    assert t.landslide_mask.dims == ("y", "x")
    assert t.misregistration_ns.dims == ("time",)
    assert t.sizes["time"] == 12 and (t.sizes["y"], t.sizes["x"]) == sc.shape
    assert [np.datetime64(d, "ns") for d in sc.dates] == list(t.time.values)
    a, _, c, _, e, f = sc.transform
    np.testing.assert_allclose(t.x.values[:2], [c + 0.5 * a, c + 1.5 * a])
    np.testing.assert_allclose(t.y.values[:2], [f + 0.5 * e, f + 1.5 * e])
    assert t.attrs["crs"] == "EPSG:32632"
    np.testing.assert_allclose(t.attrs["transform"], sc.transform)


def test_truth_motion(scene: tuple[SyntheticScene, float]) -> None:
    sc, _ = scene
    t = sc.truth()
    ew, ns = t.cumulative_ew.values, t.cumulative_ns.values
    mag = np.hypot(ew, ns)
    mask = t.landslide_mask.values.astype(bool)
    assert np.all(mag[0] == 0), "first date must be zero"
    assert np.all(mag[:, ~mask] == 0), "motion outside the lobe"
    assert (mag[-1][mask] > 0).mean() > 0.99
    # lobe about 1/6 of the scene wide, away from the edges
    rows, cols = np.nonzero(mask)
    width = min(np.ptp(rows), np.ptp(cols))
    assert 40 <= width <= 120
    assert rows.min() > 20 and cols.min() > 20 and rows.max() < 380 and cols.max() < 380
    # accelerating at the centre, reaching max_displacement
    r, c = np.unravel_index(np.argmax(mag[-1]), mag[-1].shape)
    series = mag[:, r, c]
    days = np.array([(d - sc.dates[0]).days for d in sc.dates], dtype=float)
    velocity = np.diff(series) / np.diff(days)
    assert np.all(np.diff(series) > 0)
    assert np.all(np.diff(velocity) > 0), "velocity must grow (acceleration)"
    assert series[-1] == pytest.approx(40.0, rel=1e-3)
    # a fixed direction, downslope towards the south-east
    assert ew[-1, r, c] > 0 and ns[-1, r, c] < 0
    direction = np.arctan2(ew[1:, mask], ns[1:, mask])
    assert np.ptp(direction) < 1e-3
    # misregistration is separate from the truth and non-zero
    mis = np.hypot(t.misregistration_ew.values, t.misregistration_ns.values)
    assert np.all(mis > 0) and 0.5 < mis.mean() < 10.0


def test_no_misregistration_when_disabled(clean: SyntheticScene) -> None:
    t = clean.truth()
    assert np.all(t.misregistration_ew.values == 0)
    assert np.all(t.misregistration_ns.values == 0)
    assert np.all(t.cloud_mask.values == 0)


# ----------------------------------------------------------------------------- geometry


def test_sign_convention_inside_lobe(clean: SyntheticScene) -> None:
    t = clean.truth()
    ew, ns = t.cumulative_ew.values[-1], t.cumulative_ns.values[-1]
    r, c = np.unravel_index(np.argmax(np.hypot(ew, ns)), ew.shape)
    half = 16
    win = _patch(r, c, half)
    ref, sec = _read(clean.paths[0]), _read(clean.paths[-1])
    d_row, d_col = _measure(ref, sec, r, c, half)
    measured_ew = d_col * PIX  # content moving to larger columns = east
    measured_ns = -d_row * PIX  # content moving to smaller rows = north
    expected_ew, expected_ns = _hann_mean(ew[win]), _hann_mean(ns[win])
    assert abs(expected_ew) > 15.0 and abs(expected_ns) > 15.0  # a strong test
    assert np.sign(measured_ew) == np.sign(expected_ew)
    assert np.sign(measured_ns) == np.sign(expected_ns)
    assert measured_ew == pytest.approx(expected_ew, abs=0.2 * PIX)
    assert measured_ns == pytest.approx(expected_ns, abs=0.2 * PIX)
    # the stable ground does not move
    rs, cs = _stable_patch_centre(t.landslide_mask.values, half)
    d_row, d_col = _measure(ref, sec, rs, cs, half)
    assert abs(d_row) < 0.1 and abs(d_col) < 0.1


def test_misregistration_is_a_uniform_translation(shifted: SyntheticScene) -> None:
    """On stable ground every window shows the same shift: the misregistration difference.

    Seasonal radiometric change makes a few windows of cross-season pairs decorrelate (as
    in real agricultural scenes), so the check uses the median and the share of good ones.
    """
    t = shifted.truth()
    mis_ew, mis_ns = t.misregistration_ew.values, t.misregistration_ns.values
    mask = t.landslide_mask.values
    half = 16
    ref = _read(shifted.paths[0])
    centres = [
        (r, c)
        for r in range(half + 12, shifted.shape[0] - half - 12, 16)
        for c in range(half + 12, shifted.shape[1] - half - 12, 16)
        if not mask[r - half - 8 : r + half + 8, c - half - 8 : c + half + 8].any()
    ]
    assert len(centres) > 40
    strongest = 0.0
    for k in range(1, len(shifted.paths)):
        sec = _read(shifted.paths[k])
        expected = np.array([-(mis_ns[k] - mis_ns[0]), mis_ew[k] - mis_ew[0]]) / PIX
        strongest = max(strongest, float(np.abs(expected).max()))
        shifts = np.array([_measure(ref, sec, r, c, half) for r, c in centres])
        np.testing.assert_allclose(np.median(shifts, axis=0), expected, atol=0.1)
        good = np.all(np.abs(shifts - expected) < 0.25, axis=1).mean()
        assert good > 0.75, (k, good)
    assert strongest > 1.0  # the shifts tested are well above the tolerance


def test_warp_is_consistent_with_truth(clean: SyntheticScene) -> None:
    """The ground point at pixel X on the first date is sampled at X + U(X) later on."""
    t = clean.truth()
    a, b = t.attrs["landslide_semi_axes_m"] / PIX
    x_c, y_c = t.attrs["landslide_center_xy"]
    transform = clean.transform
    lobe = synthetic._Lobe(
        row=(transform[5] - y_c) / PIX - 0.5,
        col=(x_c - transform[2]) / PIX - 0.5,
        a=a,
        b=b,
        azimuth=float(t.attrs["landslide_azimuth_deg"]),
    )
    rows, cols = np.mgrid[0 : clean.shape[0], 0 : clean.shape[1]].astype(float)
    mask = t.landslide_mask.values.astype(bool)
    for k in range(1, len(clean.dates)):
        ew, ns = t.cumulative_ew.values[k], t.cumulative_ns.values[k]
        y_row, y_col = rows - ns / PIX, cols + ew / PIX  # where the ground point shows
        amp = float(np.hypot(ew, ns).max()) / PIX
        synthetic._inverse_motion(y_row, y_col, lobe, amp)
        np.testing.assert_allclose(y_row[mask], rows[mask], atol=1e-4)
        np.testing.assert_allclose(y_col[mask], cols[mask], atol=1e-4)


# ----------------------------------------------------------------------------- clouds


def test_clouds(scene: tuple[SyntheticScene, float]) -> None:
    sc, _ = scene
    t = sc.truth()
    cloud = t.cloud_mask.values.astype(bool)
    fraction = cloud.mean(axis=(1, 2))
    cloudy = np.flatnonzero(fraction > 0)
    assert len(cloudy) == 3 and 0 not in cloudy
    assert np.all((fraction[cloudy] >= 0.05) & (fraction[cloudy] <= 0.25))
    clear = np.setdiff1d(np.arange(len(sc.paths)), cloudy)
    assert not t.shadow_mask.values[clear].any()
    for k in cloudy:
        dn = _read(sc.paths[k])
        m = cloud[k]
        assert np.median(dn[m]) > 2500
        assert np.median(dn[m]) > 2.0 * np.median(dn[~m])
        # the cloud hides the ground that shows on the first date
        assert not np.allclose(dn[m], _read(sc.paths[0])[m], rtol=0.2)


def test_radiometry_changes_between_dates(clean: SyntheticScene) -> None:
    a, b = _read(clean.paths[0]), _read(clean.paths[1])
    mask = clean.truth().landslide_mask.values.astype(bool)
    ratio = b[~mask] / a[~mask]
    assert np.std(ratio) > 0.02  # not a mere copy or a single gain
    assert np.corrcoef(a[~mask], b[~mask])[0, 1] > 0.3  # still the same landscape


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"n_dates": 1}, "n_dates"),
        ({"n_dates": 4, "cloudy_dates": 4}, "cloudy_dates"),
        ({"n_dates": 12, "span_days": 30}, "span_days"),
        ({"crs": "EPSG:4326"}, "crs"),
        ({"crs": "not a crs"}, "crs"),
        ({"shape": (50, 400)}, "shape"),
        ({"max_displacement": 5000.0}, "max_displacement"),
        ({"pixel_size": 0.0}, "pixel_size"),
    ],
)
def test_invalid_parameters(tmp_path: Path, kwargs: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        make_scene(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())
