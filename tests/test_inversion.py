"""Tests of the time-series inversion on synthetic histories with known truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from tio import _inversion
from tio.errors import ConfigError, InversionError
from tio.inversion import invert

N_DATES = 15


# --------------------------------------------------------------------------- helpers
def _dates(n=N_DATES, seed=0):
    """``n`` random distinct dates over two years; returns datetime64[ns] and years."""
    rng = np.random.default_rng(seed)
    days = np.sort(rng.choice(730, n, replace=False))
    dates = np.datetime64("2020-01-01", "ns") + days.astype("timedelta64[D]")
    return dates, (days - days[0]) / 365.25


def _network(n=N_DATES, span=4):
    """Each date paired with the next ``span`` dates."""
    i1, i2 = zip(
        *[(i, j) for i in range(n) for j in range(i + 1, min(n, i + span + 1))], strict=True
    )
    return np.array(i1), np.array(i2)


def _history(t, shape, seed=0, moving=1.0, linear=False):
    """Truth (2, N, ny, nx): accelerating (or linear) motion, different at each pixel.

    ``moving`` is the share of pixels that move; the others are stable (so the
    spread of a pair map is its noise, as on real scenes).
    """
    rng = np.random.default_rng(seed + 100)
    mov = rng.random(shape) < moving
    v = rng.uniform(-2.0, 2.0, (2, *shape)) * mov  # m/year
    a = 0.0 if linear else rng.uniform(0.5, 3.0, (2, *shape)) * mov  # m/year^2
    tt = t[None, :, None, None]
    return v[:, None] * tt + (0.0 if linear else a[:, None] * tt**2)


def _pairs(
    truth, dates, i1, i2, *, noise=0.0, seed=0, outliers=0.0, outlier_size=20.0, joint=False
):
    """Pair Dataset from a truth history, with Gaussian noise and gross outliers.

    ``joint``: the outliers hit both components of a pair at a pixel (a wrong
    correlation peak), with random signs; else each component on its own.
    """
    rng = np.random.default_rng(seed + 200)
    d = truth[:, i2] - truth[:, i1]
    noise = np.broadcast_to(np.asarray(noise, float).reshape(-1, 1, 1), d.shape[1:])
    d = d + noise * rng.standard_normal(d.shape)
    bad = rng.random(d.shape[1:] if joint else d.shape) < outliers
    bad = np.broadcast_to(bad, d.shape)
    d[bad] += rng.choice([-1.0, 1.0], bad.sum()) * outlier_size
    ny, nx = d.shape[-2:]
    return xr.Dataset(
        {
            "ew": (("pair", "y", "x"), d[0].astype("float32")),
            "ns": (("pair", "y", "x"), d[1].astype("float32")),
        },
        coords={
            "x": 500000.0 + 10.0 * np.arange(nx),
            "y": 4000000.0 - 10.0 * np.arange(ny),
            "pair": [f"p{k:03d}" for k in range(i1.size)],
            "date1": ("pair", dates[i1]),
            "date2": ("pair", dates[i2]),
        },
        attrs={"crs": "EPSG:32718", "transform": (10.0, 0.0, 500000.0, 0.0, -10.0, 4e6)},
    )


def _cum(out):
    return np.stack([out["cumulative_ew"].values, out["cumulative_ns"].values]).astype(float)


def _rms(x):
    return float(np.sqrt(np.nanmean(np.square(x))))


# --------------------------------------------------------------------------- accuracy
def test_exact_recovery_without_noise():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (8, 9))
    out = invert(_pairs(truth, dates, i1, i2))
    assert np.abs(_cum(out) - truth).max() < 1e-4
    assert np.all(out["cumulative_ew"].values[0] == 0)
    assert np.all(out["sigma_ew"].values[0] == 0)
    assert not out["smoothed"].values.any()
    assert np.all(out["n_pairs"].values == i1.size)
    assert np.nanmax(np.abs(out["residual_ew"].values)) < 1e-4


def test_robust_inversion_beats_least_squares_with_gross_outliers():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (30, 30), moving=1 / 3)
    pairs = _pairs(truth, dates, i1, i2, noise=0.05, outliers=0.10, outlier_size=20.0)
    plain = _cum(invert(pairs, reweight_iterations=0, gross_outlier=1e6)) - truth
    out = invert(pairs)  # defaults: one re-weighting pass
    robust = _cum(out) - truth
    robust3 = _cum(invert(pairs, reweight_iterations=3)) - truth
    # Measured: RMS 4.4 m (plain) vs 2.3 m (defaults); median |error| 2.4 m vs 0.03 m;
    # share of pixel-dates within 0.3 m: 17 % vs 93 % (98 % with 3 passes).
    # The RMS of the robust result is dominated by the few pixels where 2 of the
    # 4 pairs of the first or last date are outliers (no estimator can tell).
    assert _rms(robust) < 0.6 * _rms(plain)
    assert np.median(np.abs(robust)) < 0.1 < 1.0 < np.median(np.abs(plain))
    assert np.mean(np.abs(robust) < 0.3) > 0.9
    assert np.mean(np.abs(robust3) < 0.3) > 0.95
    assert np.mean(np.abs(plain) < 0.3) < 0.3
    n_out = out["n_outliers_ew"].values.mean()
    assert 0.5 * 0.1 * i1.size < n_out < 3 * 0.1 * i1.size


@pytest.mark.parametrize(
    "pattern",
    ["one pair", "two pairs of one date", "pair of the last date", "one pair everywhere", "6 m"],
)
def test_each_outlier_pattern_is_rejected(pattern):
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (6, 7), moving=0.5)
    pairs = _pairs(truth, dates, i1, i2, noise=0.05, seed=4)
    ew = pairs["ew"].values
    k7 = np.flatnonzero((i1 == 7) | (i2 == 7))
    last = np.flatnonzero(i2 == N_DATES - 1)
    bad = {
        "one pair": [(12, 20.0, np.s_[:3, :])],
        "two pairs of one date": [(k7[0], 15.0, np.s_[:]), (k7[-1], -12.0, np.s_[:])],
        "pair of the last date": [(last[-1], -25.0, np.s_[:])],
        "one pair everywhere": [(30, 30.0, np.s_[:])],
        "6 m": [(5, 6.5, np.s_[:]), (40, -6.5, np.s_[:])],
    }[pattern]
    hit = np.zeros(ew.shape, bool)
    for k, size, where in bad:
        ew[k][where] += size
        hit[k][where] = True
    # Three passes: with the single default pass, a 25 m error on one of the 4
    # pairs of the last date pulls the first solution so far that the 4 pairs
    # all exceed 5 m and the date is left to the smoothing (then flagged).
    out = invert(pairs, reweight_iterations=3)
    err = np.abs(out["cumulative_ew"].values - truth[0])
    assert err.max() < 0.25, (pattern, err.max())
    assert not out["smoothed"].values.any()
    # every injected value is rejected, and nothing else (clean pixels: none), in both
    # components (a pair is rejected as a whole); NS loses the pair but not its accuracy
    assert np.array_equal(out["n_outliers_ew"].values, hit.sum(axis=0))
    assert np.array_equal(out["n_outliers_ns"].values, hit.sum(axis=0))
    assert np.abs(out["cumulative_ns"].values - truth[1]).max() < 0.25
    # its residual is the injected error
    res = out["residual_ew"].values
    for k, size, where in bad:
        assert np.allclose(res[k][where], size, atol=0.3)
    # each component on its own: NS rejects nothing
    apart = invert(pairs, reweight_iterations=3, joint_outliers=False)
    assert np.array_equal(apart["n_outliers_ew"].values, hit.sum(axis=0))
    assert (apart["n_outliers_ns"].values == 0).all()


def test_outlier_is_rejected_in_both_components():
    """A wrong match: 20 m off in EW, 4.5 m in NS (below the 5 m threshold).

    Date 8 keeps one pair (clouds took the others), the wrong match. Both of
    its values come from one correlation peak: rejected in EW, the pair is
    rejected in NS too, and the date is interpolated (flagged ``smoothed``).
    Treated apart, NS keeps it (its deletion residual is under the threshold)
    and the date takes the error.
    """
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (5, 6), moving=0.5)
    pairs = _pairs(truth, dates, i1, i2, noise=0.05, seed=6)
    k = np.flatnonzero((i1 == 7) & (i2 == 8))[0]
    for v in ("ew", "ns"):
        gone = ((i1 == 8) | (i2 == 8)) & (np.arange(i1.size) != k)
        pairs[v].values[gone] = np.nan
    pairs["ew"].values[k] += 20.0
    pairs["ns"].values[k] += 4.5
    joint = invert(pairs)
    apart = invert(pairs, joint_outliers=False)
    err_joint = np.abs(joint["cumulative_ns"].values - truth[1])
    err_apart = np.abs(apart["cumulative_ns"].values - truth[1])
    assert (joint["n_outliers_ns"].values == 1).all()
    assert (apart["n_outliers_ns"].values == 0).all()
    assert joint["smoothed"].values[8].all()
    assert err_joint.max() < 0.5
    assert np.median(err_apart[8]) > 4.0
    assert np.allclose(joint["residual_ns"].values[k], 4.5, atol=0.3)


def test_lone_gross_outlier_is_rejected_by_the_regularisation():
    """A gross error on the only pair of a date: no other pair can contradict it.

    Without the temporal regularisation it goes straight into that date (its
    residual is 0); the deletion residual under the regularisation (the pair
    against the motion of the dates around it) rejects it, and the date is
    interpolated (flagged ``smoothed``).
    """
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (4, 5), moving=0.5)
    pairs = _pairs(truth, dates, i1, i2, noise=0.05, seed=3)
    j = 7
    lone = np.flatnonzero((i1 == j - 1) & (i2 == j))[0]
    others = ((i1 == j) | (i2 == j)) & (np.arange(i1.size) != lone)
    for v in ("ew", "ns"):
        pairs[v].values[others] = np.nan
    pairs["ew"].values[lone] += 15.0
    out = invert(pairs)
    err = np.abs(out["cumulative_ew"].values - truth[0])
    # measured: 0.14 m at date 7 (interpolated), 0.11 m elsewhere
    assert err.max() < 0.3, err.max()
    assert (out["n_outliers_ew"].values == 1).all()
    assert (out["n_outliers_ns"].values == 1).all()  # the pair, rejected as a whole
    assert np.abs(out["cumulative_ns"].values - truth[1]).max() < 0.3
    assert out["smoothed"].values[j].all()
    assert not np.delete(out["smoothed"].values, j, axis=0).any()
    assert np.allclose(out["residual_ew"].values[lone], 15.0, atol=0.5)
    # without the regularisation the error passes into the date untouched
    plain = invert(pairs, regularisation=0.0)
    assert np.abs(plain["cumulative_ew"].values[j] - truth[0, j]).min() > 14.0
    assert (plain["n_outliers_ew"].values == 0).all()


@pytest.mark.parametrize("joint", [True, False])
def test_stable_ground_stays_within_the_noise(joint):
    """Stable pixels, 0.1 m noise, 5 % gross errors, a quarter of the values missing.

    ``joint``: errors and gaps hit both components of a pair (as from a
    correlator: one peak, or none), inverted with the defaults; else each
    component on its own, inverted with ``joint_outliers=False``.
    """
    dates, _ = _dates()
    i1, i2 = _network()
    truth = np.zeros((2, N_DATES, 30, 30))
    pairs = _pairs(
        truth, dates, i1, i2, noise=0.1, seed=5, outliers=0.05, outlier_size=12.0, joint=joint
    )
    rng = np.random.default_rng(5)
    gone = rng.random(pairs["ew"].shape) < 0.25
    for v in ("ew", "ns"):
        pairs[v].values[gone if joint else rng.random(pairs[v].shape) < 0.25] = np.nan
    err = np.abs(_cum(invert(pairs, joint_outliers=joint)))
    plain = np.abs(_cum(invert(pairs, regularisation=0.0, joint_outliers=joint)))
    # measured: joint, RMS 0.09 m (1.22 m without regularisation), 99 % of the
    # values within 0.26 m (7.4 m without); apart, RMS 0.64 m (2.9 m without), 98 %
    # within 0.3 m, 99 % within 0.35 m (12.1 m without)
    assert np.isfinite(err).all()
    assert np.median(err) < 0.1
    assert np.mean(err < 0.3) > (0.99 if joint else 0.98)
    assert np.quantile(err, 0.99) < 0.4 < 5.0 < np.quantile(plain, 0.99)
    assert _rms(err) < (0.1 if joint else 0.3) * _rms(plain)


def test_real_step_is_kept_exactly():
    """A step seen by every pair across it is data, not an outlier: exact recovery."""
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (3, 4), linear=True)
    truth[:, 6:] += np.array([4.0, -3.0])[:, None, None, None]
    out = invert(_pairs(truth, dates, i1, i2))
    assert np.abs(_cum(out) - truth).max() < 1e-4
    assert (out["n_outliers_ew"].values == 0).all()
    # regularising the result instead smooths the step
    solved = invert(_pairs(truth, dates, i1, i2), regularisation_mode="solve")
    assert np.abs(_cum(solved) - truth).max() > 0.05


def test_redundancy_lowers_the_error():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (25, 25), moving=1 / 3)
    pairs = _pairs(truth, dates, i1, i2, noise=0.1)
    successive = np.flatnonzero(i2 - i1 == 1)
    err_all = _rms(_cum(invert(pairs)) - truth)
    err_chain = _rms(_cum(invert(pairs.isel(pair=successive))) - truth)
    # Measured ~0.07 m vs ~0.25 m.
    assert err_all < 0.5 * err_chain


def test_std_weighting_down_weights_noisy_pairs():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (25, 25), moving=1 / 3)
    noise = np.full(i1.size, 0.02)
    noise[::4] = 0.5  # a quarter of the pairs are much noisier
    pairs = _pairs(truth, dates, i1, i2, noise=noise)
    err_std = _rms(_cum(invert(pairs, pair_weighting="std")) - truth)
    err_none = _rms(_cum(invert(pairs, pair_weighting="none")) - truth)
    assert err_std < 0.5 * err_none


def test_residual_weights_measure_pair_noise_where_everything_moves():
    """Every pixel moves, faster than the noise: the spread of a map is signal.

    The residuals of a first inversion still measure each pair's noise: the
    weights follow the true variances, and the default weighting beats both the
    map spread ("std", which here weights pairs by their motion, not their noise,
    and lets gross errors on the pairs it favours hide) and equal weights.
    """
    from tio.inversion import residual_pair_weights

    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (25, 25), moving=1.0)
    noise = np.random.default_rng(3).uniform(0.05, 0.5, i1.size)
    pairs = _pairs(truth, dates, i1, i2, noise=noise, outliers=0.03)
    w = residual_pair_weights(pairs)
    for c in ("ew", "ns"):
        assert w[c].shape == (i1.size,)
        assert np.isclose(w[c].mean(), 1.0)
        # 1/w proportional to the true variance (measured: correlation 0.98 and 0.99)
        assert np.corrcoef(1.0 / w[c], noise**2)[0, 1] > 0.9
    err = {
        k: _rms(_cum(invert(pairs, pair_weighting=k)) - truth) for k in ("residual", "std", "none")
    }
    # measured: 0.15 m, 0.57 m, 0.20 m
    assert err["residual"] < 0.85 * min(err["std"], err["none"]), err
    # the default is the residual weighting, from a sample of at most 2,000 pixels
    assert invert(pairs).attrs["inversion_pair_weighting"] == "residual"


def test_residual_weights_ignore_a_pair_offset():
    """A misregistration (offset of a whole pair) is left to the corrections."""
    from tio.inversion import residual_pair_weights

    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (20, 20), moving=1.0)
    pairs = _pairs(truth, dates, i1, i2, noise=0.1)
    shifted = pairs.copy(deep=True)
    shifted["ew"].values[5] += 1.5
    w, ws = residual_pair_weights(pairs)["ew"], residual_pair_weights(shifted)["ew"]
    # measured: 0.61 (the offset spreads a little into the other pairs); about
    # 0.005 if the offset counted as noise
    assert ws[5] / w[5] > 0.5


def test_score_weighting():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (10, 10), moving=1 / 3)
    pairs = _pairs(truth, dates, i1, i2, noise=0.02)
    bad = np.zeros(i1.size, bool)
    bad[5::7] = True
    for v in ("ew", "ns"):
        pairs[v].values[bad] += 3.0
    score = np.where(bad, 0.001, 1.0)[:, None, None] * np.ones(pairs["ew"].shape)
    score[0, 0, 0] = 0.0  # score 0: the pair is not used at that pixel
    pairs["score"] = (("pair", "y", "x"), score.astype("float32"))
    kw = {"reweight_iterations": 0, "pair_weighting": "none"}
    err_plain = _rms(_cum(invert(pairs, **kw)) - truth)
    out = invert(pairs, score_weighting=True, **kw)
    assert _rms(_cum(out) - truth) < 0.2 * err_plain
    assert out["n_pairs"].values[0, 0] == i1.size - 1
    assert out.attrs["inversion_score_weighting"] == 1
    with pytest.raises(InversionError, match="score"):
        invert(pairs.drop_vars("score"), score_weighting=True)


# --------------------------------------------------------------------------- invalid data
def test_nan_pairs_and_min_valid_fraction():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (6, 8))
    pairs = _pairs(truth, dates, i1, i2)
    ew, ns = pairs["ew"].values, pairs["ns"].values
    rng = np.random.default_rng(3)
    long_pairs = np.flatnonzero(i2 - i1 > 1)  # dropping these keeps the network connected
    expected = np.full((6, 8), i1.size)
    for x in range(8):  # rows 0-1: 25 % of the pairs NaN in one or the other component
        for y in (0, 1):
            drop = rng.choice(long_pairs, 12, replace=False)
            (ew if x % 2 else ns)[drop, y, x] = np.nan
            expected[y, x] -= 12
    chain = np.flatnonzero(i2 - i1 == 1)
    others = np.setdiff1d(np.arange(i1.size), chain)
    ew[others[1:], 2, :] = np.nan  # row 2: 15 valid pairs of 50 (= 30 %), connected
    expected[2, :] = 15
    ew[others, 4, :] = np.nan  # row 4: 14 valid pairs (< 30 %)
    expected[4, :] = 14
    ew[:, 5, :3] = np.nan  # row 5: no valid pair at all
    expected[5, :3] = 0

    out = invert(pairs)
    assert np.array_equal(out["n_pairs"].values, expected)
    cum = _cum(out)
    done = expected >= 15
    assert np.abs(cum - truth)[:, :, done].max() < 1e-4
    assert np.isnan(cum[:, :, ~done]).all()
    for v in ("sigma_ew", "velocity_ew", "rms_date_ns", "velocity_sigma_ns"):
        assert np.isnan(out[v].values[..., ~done]).all()
    assert not out["smoothed"].values[:, ~done].any()
    # residuals: NaN exactly where the pair is not valid or the pixel not inverted
    valid = np.isfinite(ew) & np.isfinite(ns) & done
    assert np.array_equal(np.isfinite(out["residual_ew"].values), valid)
    # a lower threshold inverts row 4 too
    out = invert(pairs, min_valid_fraction=0.28)
    assert np.isfinite(out["cumulative_ew"].values[:, 4, :]).all()


# --------------------------------------------------------------------------- disconnected
@pytest.fixture(scope="module")
def gapped():
    """Pixels with three kinds of network: split in two halves, first date cut off, whole."""
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (6, 6))
    pairs = _pairs(truth, dates, i1, i2)
    cross = (i1 < 8) & (i2 >= 8)
    pairs["ew"].values[cross, :2, :] = np.nan  # rows 0-1: dates 0-7 | 8-14
    pairs["ns"].values[i1 == 0, 2:4, :] = np.nan  # rows 2-3: date 0 isolated
    return pairs, truth, t


def test_disconnected_network_is_tied_by_smoothing(gapped):
    pairs, truth, _ = gapped
    out = invert(pairs)
    cum, sm = _cum(out), out["smoothed"].values
    assert np.isfinite(cum).all()
    n = N_DATES
    assert sm[8:, :2].all() and not sm[:8, :2].any()  # largest: first half (8 dates)
    assert sm[0, 2:4].all() and not sm[1:, 2:4].any()
    assert not sm[:, 4:].any()
    # Inside each sub-network the data are fitted exactly.
    rel = cum - np.where(np.arange(n)[:, None, None] < 8, cum[:, :1], cum[:, 8:9])
    rel_t = truth - np.where(np.arange(n)[:, None, None] < 8, truth[:, :1], truth[:, 8:9])
    assert np.abs(rel - rel_t)[:, :, :2].max() < 1e-4
    assert np.abs((cum - cum[:, 1:2]) - (truth - truth[:, 1:2]))[:, 1:, 2:4].max() < 1e-4
    assert np.abs(cum - truth)[:, :, 4:].max() < 1e-4
    # The offsets come from smoothing: wrong (the motion accelerates) but finite.
    assert np.abs(cum - truth)[:, 8:, :2].max() > 1e-3


def test_smoothing_is_time_aware(gapped):
    """A constant velocity has zero smoothing penalty, even on irregular dates."""
    pairs, _, t = gapped
    truth = _history(t, (6, 6), linear=True)
    dates = np.unique(np.concatenate([pairs["date1"].values, pairs["date2"].values]))
    i1 = np.searchsorted(dates, pairs["date1"].values)
    i2 = np.searchsorted(dates, pairs["date2"].values)
    lin = _pairs(truth, dates, i1, i2)
    lin = lin.where(np.isfinite(pairs["ew"]) & np.isfinite(pairs["ns"]))
    out = invert(lin)
    assert out["smoothed"].values.any()
    assert np.abs(_cum(out) - truth).max() < 1e-4


def test_disconnected_without_smoothing_is_nan(gapped):
    pairs, truth, _ = gapped
    out = invert(pairs, smoothing_gamma2=0.0)
    cum, sig = _cum(out), out["sigma_ns"].values
    assert np.isnan(cum[:, 8:, :2]).all() and np.isnan(sig[8:, :2]).all()
    assert np.abs(cum - truth)[:, :8, :2].max() < 1e-4
    # First date cut off: the series starts (at 0) at the second date.
    assert np.isnan(cum[:, 0, 2:4]).all()
    assert np.abs(cum - (truth - truth[:, 1:2]))[:, 1:, 2:4].max() < 1e-4
    assert np.all(sig[1, 2:4] == 0)
    assert np.abs(cum - truth)[:, :, 4:].max() < 1e-4
    assert np.array_equal(out["smoothed"].values, invert(pairs)["smoothed"].values)


def test_smoothed_dates_have_larger_sigma(gapped):
    pairs, truth, _ = gapped
    rng = np.random.default_rng(0)
    noisy = pairs.copy(deep=True)
    for v in ("ew", "ns"):
        noisy[v].values += (0.01 * rng.standard_normal(noisy[v].shape)).astype("float32")
    out = invert(noisy, pair_weighting="none")
    sig, sm = out["sigma_ew"].values, out["smoothed"].values
    split = sig[:, :2]
    assert split[sm[:, :2]].min() > 3 * split[~sm[:, :2]].max()
    # First date cut off: every later date depends on the smoothed offset.
    assert sig[1:, 2:4].min() > 3 * sig[:, 4:].max()


# --------------------------------------------------------------------------- uncertainty
@pytest.mark.parametrize("weighting", ["none", "std"])
def test_sigma_matches_monte_carlo(weighting):
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (40, 50), moving=0.0 if weighting == "std" else 1.0)
    noise = 0.1 if weighting == "none" else np.random.default_rng(1).uniform(0.05, 0.3, i1.size)
    out = invert(
        _pairs(truth, dates, i1, i2, noise=noise), pair_weighting=weighting, reweight_iterations=0
    )
    err = (out["cumulative_ew"].values - truth[0]).reshape(N_DATES, -1)[1:]
    reported = np.sqrt(np.mean(out["sigma_ew"].values.reshape(N_DATES, -1)[1:] ** 2, axis=1))
    ratio = reported / err.std(axis=1)
    assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio


# --------------------------------------------------------------------------- products
def test_velocity_of_linear_motion_is_exact():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (5, 7), linear=True)
    out = invert(_pairs(truth, dates, i1, i2))
    v_true = truth[:, -1] / t[-1]
    assert np.abs(out["velocity_ew"].values - v_true[0]).max() < 1e-4
    assert np.abs(out["velocity_ns"].values - v_true[1]).max() < 1e-4
    assert np.all(np.isfinite(out["velocity_sigma_ew"].values))


def test_residual_rms_point_to_the_bad_pair():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (10, 10), moving=1 / 3)
    pairs = _pairs(truth, dates, i1, i2, noise=0.01)
    k = 21
    pairs["ew"].values[k] += 1.0  # below the gross-outlier threshold
    out = invert(pairs)
    rms = out["rms_pair_ew"].values
    assert np.argmax(rms) == k and rms[k] > 5 * np.median(rms)
    assert np.median(out["residual_ew"].values[k]) > 0.3  # data minus model
    rd = out["rms_date_ew"].values.mean(axis=(1, 2))
    assert set(np.argsort(rd)[-2:]) == {i1[k], i2[k]}


def test_output_structure_and_pair_order():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (4, 5))
    pairs = _pairs(truth, dates, i1, i2, noise=0.01)
    perm = np.random.default_rng(0).permutation(i1.size)
    shuffled = pairs.isel(pair=perm)
    out = invert(shuffled, block_size=7)
    ref = invert(pairs)

    assert np.array_equal(out["time"].values, dates)
    assert out["time"].dtype == np.dtype("datetime64[ns]")
    assert np.array_equal(out["date1"].values, shuffled["date1"].values)
    assert np.array_equal(out["pair"].values, shuffled["pair"].values)
    assert np.array_equal(out["x"].values, pairs["x"].values)
    assert np.allclose(_cum(out), _cum(ref), atol=1e-5)
    assert np.allclose(out["residual_ns"].values, ref["residual_ns"].values[perm], atol=1e-5)
    assert np.allclose(out["rms_pair_ew"].values, ref["rms_pair_ew"].values[perm], atol=1e-6)

    shapes = {("time", "y", "x"), ("y", "x"), ("pair",), ("pair", "y", "x")}
    for name, var in out.data_vars.items():
        assert var.dims in shapes, name
        assert "units" in var.attrs and "long_name" in var.attrs, name
    for c in ("ew", "ns"):
        for v in ("cumulative", "sigma", "rms_date"):
            assert out[f"{v}_{c}"].dims == ("time", "y", "x")
            assert out[f"{v}_{c}"].dtype == np.float32
        for v in ("velocity", "velocity_sigma"):
            assert out[f"{v}_{c}"].dims == ("y", "x") and out[f"{v}_{c}"].dtype == np.float32
        assert out[f"residual_{c}"].dims == ("pair", "y", "x")
        assert out[f"rms_pair_{c}"].dims == ("pair",)
    assert out["n_pairs"].dtype == np.int16
    assert out["smoothed"].dtype == bool and out["smoothed"].dims == ("time", "y", "x")
    assert out.attrs["crs"] == "EPSG:32718"
    assert out.attrs["inversion_pair_weighting"] == "residual"
    assert out.attrs["inversion_smoothing_gamma2"] == 0.003


# --------------------------------------------------------------------------- errors
def _small():
    dates, t = _dates(4)
    i1, i2 = _network(4, 2)
    return _pairs(_history(t, (2, 3)), dates, i1, i2)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda p: p.isel(pair=slice(0, 0)), "no pairs"),
        (lambda p: p.drop_vars("ns"), "ns"),
        (lambda p: p.assign(ns=p["ns"].isel(y=0)), "same"),
        (lambda p: p.drop_vars("date2"), "date2"),
        (lambda p: p.assign_coords(date1=("pair", np.arange(p.sizes["pair"]))), "datetime"),
        (lambda p: p.assign_coords(date2=p["date1"]), "date1 >= date2"),
        (
            lambda p: p.assign_coords(date1=p["date2"].variable, date2=p["date1"].variable),
            "date1 >= date2",
        ),
        (lambda p: p["ew"], "Dataset"),
    ],
)
def test_bad_input_raises(mutate, match):
    with pytest.raises(InversionError, match=match):
        invert(mutate(_small()))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"residual_scale": 0},
        {"gross_outlier": -1.0},
        {"reweight_iterations": -1},
        {"reweight_iterations": 1.5},
        {"smoothing_gamma2": -0.1},
        {"regularisation": -1.0},
        {"regularisation": float("nan")},
        {"regularisation_mode": "always"},
        {"min_valid_fraction": 1.5},
        {"pair_weighting": "snr"},
        {"block_size": 0},
    ],
)
def test_bad_parameter_raises(kwargs):
    with pytest.raises(ConfigError):
        invert(_small(), **kwargs)


# --------------------------------------------------------------------------- internals
def test_singular_system_is_flagged_not_raised():
    # band storage (b+1, K, M): identity, zero matrix, a tiny last pivot
    A = np.zeros((2, 3, 3))
    A[0, :, 0] = 1.0
    A[0, :, 2] = [1.0, 1.0, 1e-15]
    ok = _inversion.band_cholesky(A)
    assert ok.tolist() == [True, False, False]
    assert np.all(np.isfinite(_inversion.band_solve(A, np.ones((3, 3)))))


def test_banded_algebra_matches_dense():
    rng = np.random.default_rng(5)
    b, k, m = 4, 12, 7
    # random SPD banded matrices: Laplacian-like band plus a positive diagonal
    Ab = np.zeros((b + 1, k, m))
    Ab[1:] = -rng.uniform(0, 1, (b, k, m))
    for o in range(1, b + 1):
        Ab[o, k - o :] = 0.0
    dense = _inversion.band_to_dense(Ab)
    Ab[0] = -dense.sum(axis=2).T + rng.uniform(0.1, 1.0, (k, m)) - Ab[0]
    dense = _inversion.band_to_dense(Ab)
    rhs = rng.standard_normal((k, m))
    L = Ab.copy()
    assert _inversion.band_cholesky(L).all()
    x = _inversion.band_solve(L, rhs)
    ref = np.linalg.solve(dense, rhs.T[..., None])[..., 0].T
    np.testing.assert_allclose(x, ref, rtol=1e-10, atol=1e-12)
    diag = _inversion.band_inverse_diagonal(L)
    np.testing.assert_allclose(diag, np.einsum("mii->im", np.linalg.inv(dense)), rtol=1e-10)


def test_connected_components_labels():
    i1 = np.array([0, 1, 3, 2])
    i2 = np.array([1, 2, 4, 4])
    valid = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], bool)
    labels = _inversion.connected_components(valid, i1, i2, 6)
    assert labels.tolist() == [
        [0, 0, 0, 0, 0, 5],
        [0, 0, 2, 3, 3, 5],
        [0, 1, 2, 3, 4, 5],
    ]


def test_progress_reports_every_row_once_and_blocks_do_not_change_results():
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (8, 9))
    pairs = _pairs(truth, dates, i1, i2, noise=0.1, seed=3)
    rows = []
    small = invert(pairs, block_size=18, progress=rows.append)  # blocks of 2 rows
    assert sum(rows) == 8 and len(rows) == 4
    whole = invert(pairs)
    np.testing.assert_allclose(_cum(small), _cum(whole), atol=1e-9)


@pytest.mark.parametrize(
    "gamma2, regularisation",
    [
        (0.003, {}),
        (0.0, {}),
        (0.003, {"regularisation_mode": "solve"}),
        (0.0, {"regularisation_mode": "solve"}),
        (0.003, {"regularisation": 0.0}),
    ],
)
def test_compiled_kernel_matches_numpy(monkeypatch, gamma2, regularisation):
    """The numba kernel and the numpy implementation give the same results."""
    if _inversion._jit is None:
        pytest.skip("numba not installed")
    dates, t = _dates()
    i1, i2 = _network()
    truth = _history(t, (12, 10), moving=0.5)
    pairs = _pairs(truth, dates, i1, i2, noise=0.3, outliers=0.08, outlier_size=15.0)
    ew = pairs["ew"].values
    ew[(i1 < 8) & (i2 >= 8), :3, :] = np.nan  # rows 0-2 split in two sub-networks
    ew[i2 == 5, 3, :] = np.nan  # row 3: date 5 keeps only its later pairs
    ew[i1 == 5, 3, :4] = np.nan  # ... and loses them too at 4 pixels
    kwargs = dict(reweight_iterations=2, smoothing_gamma2=gamma2, **regularisation)
    fast = invert(pairs, **kwargs)
    monkeypatch.setattr(_inversion, "USE_JIT", False)
    ref = invert(pairs, **kwargs)
    assert fast["smoothed"].values.any()
    for name in ref.data_vars:
        np.testing.assert_allclose(
            fast[name].values, ref[name].values, rtol=1e-5, atol=1e-6, err_msg=name
        )


def test_nanmedian_rows_equals_numpy():
    """The one-sort row median of the pair-noise estimate equals numpy.nanmedian."""
    from tio.inversion import _nanmedian_rows

    rng = np.random.default_rng(4)
    for shape in [(40, 900), (7, 6), (5, 1)]:  # long rows: numpy's per-row loop
        a = rng.standard_normal(shape)
        a[rng.random(shape) < 0.4] = np.nan
        a[0] = np.nan  # a pair without residual
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanmedian(a, axis=1)
        np.testing.assert_array_equal(_nanmedian_rows(a), want)
