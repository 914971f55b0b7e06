import numpy as np
import xarray as xr

from tio.corrections import correct_pair


def _pair(ew, ns, score):
    ny, nx = ew.shape
    return xr.Dataset(
        {
            "ew": (("y", "x"), ew.astype("float32")),
            "ns": (("y", "x"), ns.astype("float32")),
            "score": (("y", "x"), score.astype("float32")),
        },
        coords={"x": 100.0 * np.arange(nx), "y": -100.0 * np.arange(ny)},
        attrs={"crs": None, "transform": [100, 0, 0, 0, -100, 0], "units": "m"},
    )


def test_median_offset_removed_moving_area_kept():
    rng = np.random.default_rng(1)
    ew = 4.0 + rng.normal(0, 0.3, (40, 40))
    ew[10:20, 10:20] += 15  # a landslide on 6 % of the area
    ds = _pair(ew, ew * 0 - 7.0, np.ones_like(ew))
    fixed, rec = correct_pair(ds)
    assert abs(rec["median_ew"] - 4.0) < 0.1
    assert abs(rec["median_ns"] + 7.0) < 1e-6
    assert abs(np.median(fixed["ew"].values[:10])) < 0.1
    assert abs(fixed["ew"].values[10:20, 10:20].mean() - 15) < 0.2


def test_low_score_masked_and_ramp_removed():
    y, x = np.mgrid[0:30, 0:30]
    ew = 0.1 * x - 0.05 * y + 2
    score = np.ones_like(ew)
    score[:5] = 0.05
    ds = _pair(ew, np.zeros_like(ew), score)
    fixed, rec = correct_pair(ds, min_score=0.2, median=True, ramp=True)
    assert np.isnan(fixed["ew"].values[:5]).all()
    assert np.nanmax(np.abs(fixed["ew"].values)) < 1e-4
    assert rec["valid_fraction"] == 25 / 30
    assert "ramp_ew" in rec


def test_median_test_rejects_isolated_wrong_matches_only():
    from tio.corrections import median_test

    y, x = np.mgrid[0:40, 0:40]
    rng = np.random.default_rng(0)
    ew = 0.05 * x + rng.normal(0, 0.1, x.shape)  # smooth motion plus noise
    ns = np.where((x - 20) ** 2 + (y - 20) ** 2 < 64, 12.0, 0.0)  # a moving block with sharp edges
    wrong = [(5, 5), (30, 8), (12, 33)]
    for r, c in wrong:
        ew[r, c] += 40.0
    bad = median_test(ew, ns, eps=1.0)
    assert all(bad[r, c] for r, c in wrong)
    assert bad.sum() <= len(wrong) + 4  # the block and the noise pass
    ns[20, 20] = -30.0  # a wrong match inside the moving block
    assert median_test(ew, ns, eps=1.0)[20, 20]
