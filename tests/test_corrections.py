import math

import numpy as np
import pytest
import xarray as xr

from tio.corrections import (
    correct_pair,
    correct_pairs,
    read_stable_mask,
    track_heading,
)

PX = 10.0  # image pixel size (m): 0.02 px = 0.2 m


def _pair(ew, ns, score, spacing=100.0, crs=None, x0=0.0, y0=0.0):
    ny, nx = ew.shape
    return xr.Dataset(
        {
            "ew": (("y", "x"), ew.astype("float32")),
            "ns": (("y", "x"), ns.astype("float32")),
            "score": (("y", "x"), score.astype("float32")),
        },
        coords={
            "x": x0 + spacing * (0.5 + np.arange(nx)),
            "y": y0 - spacing * (0.5 + np.arange(ny)),
        },
        attrs={
            "crs": crs,
            "transform": [spacing, 0, x0, 0, -spacing, y0],
            "units": "m",
        },
    )


def test_median_offset_removed_moving_area_kept():
    rng = np.random.default_rng(1)
    ew = 4.0 + rng.normal(0, 0.3, (40, 40))
    ew[10:20, 10:20] += 15  # a landslide on 6 % of the area
    ds = _pair(ew, ew * 0 - 7.0, np.ones_like(ew))
    fixed, rec = correct_pair(ds)
    assert abs(rec["offset_ew"] - 4.0) < 0.1
    assert abs(rec["offset_ns"] + 7.0) < 1e-6
    assert abs(np.median(fixed["ew"].values[:10])) < 0.1
    assert abs(fixed["ew"].values[10:20, 10:20].mean() - 15) < 0.2
    assert rec["stable_source"] == "auto"


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
    assert rec["low_score"] == 150
    assert abs(rec["ramp_ew_x"] - 1.0) < 1e-6  # 0.1 m per 100 m = 1 m per km


def test_median_test_kernel_equals_the_numpy_version():
    from tio.corrections import _median_test_numpy, median_test

    rng = np.random.default_rng(3)
    for shape in [(1, 5), (2, 2), (37, 53)]:
        ew = rng.normal(size=shape)
        ns = rng.normal(size=shape) * 0.3
        ew[rng.random(shape) < 0.2] = np.nan
        ns[rng.random(shape) < 0.05] = np.nan
        ew[rng.random(shape) < 0.05] += 10  # wrong matches
        ns[:, :1] = 7.0  # ties in the medians
        for eps, threshold in ((0.1, 2.0), (1.0, 0.5)):
            got = median_test(ew, ns, eps=eps, threshold=threshold)
            want = _median_test_numpy(ew, ns, eps=eps, threshold=threshold)
            np.testing.assert_array_equal(got, want)
    assert median_test(ew, ns, eps=0.1).any() and not median_test(ew, ns, eps=0.1).all()


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


def test_outlier_filters_count_what_they_remove():
    rng = np.random.default_rng(3)
    ew = 5 + rng.normal(0, 0.5, (50, 50))
    ns = rng.normal(0, 0.5, (50, 50))
    score = np.full(ew.shape, 0.9)
    score[0, :10] = 0.1  # 10 low scores
    ew[30:32, 30:32] += 80.0  # a 2 x 2 blob of implausible motion: passes the median test
    ew[10, 40] += 25.0  # an isolated wrong match
    fixed, rec = correct_pair(_pair(ew, ns, score), min_score=0.4, max_displacement=50.0)
    assert rec["low_score"] == 10
    assert rec["too_large"] == 4
    assert rec["outliers"] >= 1
    assert np.isnan(fixed["ew"].values[30:32, 30:32]).all()
    assert np.isnan(fixed["ew"].values[10, 40])


# --------------------------------------------------------------------------- synthetic
# pair maps over a 30 km area (250 m grid) with a moving lobe, a per-pair offset,
# ramp and detector stripes (boundaries along the descending ground track)


def _scene(n_pairs=6, seed=0, geometry=False):
    rng = np.random.default_rng(seed)
    ny = nx = 120
    sp = 250.0
    crs = "EPSG:32632"
    x0, y0 = 300000.0, 5200000.0
    ds0 = _pair(np.zeros((ny, nx)), np.zeros((ny, nx)), np.ones((ny, nx)), sp, crs, x0, y0)
    x = ds0["x"].values - ds0["x"].values.mean()
    y = ds0["y"].values - ds0["y"].values.mean()
    xx, yy = np.meshgrid(x, y)
    heading = track_heading(crs, ds0.attrs["transform"], (ny, nx))
    u = xx * math.cos(heading) - yy * math.sin(heading)
    det = np.digitize(u, [-9000.0, 11000.0]).astype(np.uint8) + 4  # detectors 4, 5, 6
    lobe = ((xx - 4000) / 5000) ** 2 + ((yy + 3000) / 3500) ** 2 < 1
    shape_ = np.where(lobe, 1 - ((xx - 4000) / 5000) ** 2 - ((yy + 3000) / 3500) ** 2, 0)
    truth = []
    maps = []
    for p in range(n_pairs):
        amp = 4.0 + 6.0 * p  # metres at the lobe centre: 0.4 to 3.4 px
        motion = (amp * shape_, -0.6 * amp * shape_)
        off = rng.uniform(-20, 20, 2)
        ramp = rng.uniform(-0.3, 0.3, (2, 2)) / 1000  # m per m: up to 4.5 m over the area
        steps = rng.uniform(-3, 3, (2, 3))  # per detector, m
        comps, bias = [], []
        for c in range(2):
            b = off[c] + ramp[c, 0] * xx + ramp[c, 1] * yy + steps[c][det - 4]
            bias.append(b)
            comps.append(motion[c] + b + rng.normal(0, 0.4, xx.shape))
        score = rng.uniform(0.5, 0.95, xx.shape)
        score[lobe] -= 0.1
        maps.append(_pair(comps[0], comps[1], score, sp, crs, x0, y0))
        truth.append({"motion": motion, "bias": bias, "off": off, "ramp": ramp, "steps": steps})
    return maps, truth, det, lobe, heading


def _check_recovery(results, truth, det, lobe, labels_given):
    stable_true = ~lobe
    tol = 0.02 * PX
    for (fixed, rec), t in zip(results, truth, strict=True):
        for c, comp in enumerate(("ew", "ns")):
            steps = t["steps"][c][det - 4]
            centre = np.median(steps[stable_true])  # stripes are reported with median 0
            # offset
            assert abs(rec[f"offset_{comp}"] - (t["off"][c] + centre)) < tol, (comp, rec)
            # ramp: its effect at the corners of the area (15 km from the centre)
            for k, axis in enumerate(("x", "y")):
                err_km = rec[f"ramp_{comp}_{axis}"] - 1000 * t["ramp"][c, k]
                assert abs(err_km) * 15 < tol, (comp, axis, err_km)
            # stripes: each detector band's offset
            if labels_given:
                found = dict(
                    (int(a), float(b))
                    for a, b in (s.split(":") for s in rec[f"stripes_{comp}"].split())
                )
                for d in (4, 5, 6):
                    assert abs(found[d * 100 + d] - (t["steps"][c][d - 4] - centre)) < tol
            else:
                assert len(rec["stripe_edges"].split()) == 2
            # everything removed on stable ground, lobe unchanged
            v = fixed[comp].values
            err_stable = np.nanmedian(v[stable_true])
            assert abs(err_stable) < tol
            bias_err = np.nanmean(v[lobe] - t["motion"][c][lobe])
            assert abs(bias_err) < tol, (comp, bias_err)


def test_offset_ramp_and_stripes_recovered_with_detector_footprints():
    maps, truth, det, lobe, _ = _scene()
    results = correct_pairs(
        maps,
        median=True,
        ramp=True,
        stripes=True,
        detectors=[(det, det)] * len(maps),
        pixel_size=PX,
    )
    _check_recovery(results, truth, det, lobe, labels_given=True)
    assert all(r["stable_source"] == "auto" for _, r in results)
    assert all(r["stable_pixels"] > 0.3 * lobe.size for _, r in results)


def test_stripes_from_the_track_geometry_without_footprints():
    maps, truth, det, lobe, heading = _scene(seed=1)
    results = correct_pairs(
        maps, median=True, ramp=True, stripes=True, heading=heading, pixel_size=PX
    )
    _check_recovery(results, truth, det, lobe, labels_given=False)


def test_user_stable_mask_raster_and_vector(tmp_path):
    import json

    import rasterio
    from pyproj import Transformer
    from rasterio.transform import from_origin

    maps, truth, det, lobe, _ = _scene(n_pairs=1)
    ds = maps[0]
    # raster: the lobe marked as moving (1), on a finer grid
    tr = from_origin(300000.0, 5200000.0, 125.0, 125.0)
    big = np.kron(lobe, np.ones((2, 2))).astype("uint8")
    path = tmp_path / "moving.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=240,
        height=240,
        count=1,
        dtype="uint8",
        crs="EPSG:32632",
        transform=tr,
    ) as dst:
        dst.write(big, 1)
    stable = read_stable_mask(path, ds, moving=True)
    assert (stable == ~lobe).mean() > 0.99
    fixed, rec = correct_pair(ds, stable=stable, ramp=True, pixel_size=PX)
    assert rec["stable_source"] == "mask"
    assert abs(np.nanmean(fixed["ew"].values[lobe] - truth[0]["motion"][0][lobe])) < 2.0
    # vector: a lon/lat polygon around the western half
    to_ll = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    ring = [
        to_ll.transform(x, y)
        for x, y in [
            (300000, 5200000),
            (315000, 5200000),
            (315000, 5170000),
            (300000, 5170000),
            (300000, 5200000),
        ]
    ]
    gj = tmp_path / "stable.geojson"
    gj.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    west = read_stable_mask(gj, ds)
    assert west[:, :55].all() and not west[:, 65:].any()


@pytest.mark.parametrize("n_pairs", [1])
def test_single_pair_auto_stable_ignores_the_lobe(n_pairs):
    maps, truth, det, lobe, _ = _scene(n_pairs=n_pairs, seed=4)
    fixed, rec = correct_pair(maps[0], median=True, ramp=True, pixel_size=PX)
    for c, comp in enumerate(("ew", "ns")):
        resid = (
            fixed[comp].values
            - truth[0]["motion"][c]
            - (truth[0]["bias"][c] - np.median(truth[0]["bias"][c][~lobe]))
        )
        # without stripe correction the stripes stay, but the offset is not biased by the lobe
        assert abs(np.nanmedian(fixed[comp].values[~lobe])) < 0.02 * PX + 0.5
        assert np.isfinite(resid).mean() > 0.9


# --------------------------------------------------------------------------- real data


def test_real_sentinel2_pair_has_no_offset_left_on_stable_ground(shared_data):
    """T33UUU, 2016-06-08 vs 2016-05-29: no ground motion, a misregistration of about
    7 m E-W and 17-19 m N-S (AROSICS). After correction the median over stable ground
    (every well-correlated window: nothing moves here) is within 0.05 px of zero."""
    import rasterio
    from rasterio.windows import Window

    from tio.correlation import correlate

    folder = shared_data / "sentinel2_l1c_pair_T33UUU"
    ref_path = folder / "ref_S2A_20160608T153121_T33UUU_sub.jp2"
    tgt_path = folder / "tgt_S2A_20160529T153631_T33UUU_sub.jp2"
    with rasterio.open(ref_path) as r, rasterio.open(tgt_path) as t:
        left = max(r.bounds.left, t.bounds.left)
        top = min(r.bounds.top, t.bounds.top)
    x0, y0 = left + 2000.0, top - 2000.0  # 10 x 10 km with fields, forest, haze and cloud
    arrays = []
    for path in (ref_path, tgt_path):
        with rasterio.open(path) as src:
            col, row = ~src.transform * (x0, y0)
            win = Window(round(col), round(row), 1000, 1000)
            arrays.append(src.read(1, window=win).astype("float32"))
            transform, crs = src.window_transform(win), src.crs.to_wkt()
    das = [
        xr.DataArray(
            a,
            dims=("y", "x"),
            coords={
                "y": transform.f + transform.e * (np.arange(1000) + 0.5),
                "x": transform.c + transform.a * (np.arange(1000) + 0.5),
            },
            attrs={"transform": list(transform)[:6], "crs": crs},
        )
        for a in arrays
    ]
    raw = correlate(
        *das,
        window=32,
        step=16,
        search=8,
        reference_mask=arrays[0] == 0,
        secondary_mask=arrays[1] == 0,
    )
    fixed, rec = correct_pair(raw, ramp=True, pixel_size=PX)
    good = np.isfinite(fixed["ew"].values) & (raw["score"].values > 0.7)
    assert good.sum() > 500
    for comp in ("ew", "ns"):
        before = np.median(raw[comp].values[good])
        after = np.median(fixed[comp].values[good])
        print(f"{comp}: median {before:+.2f} m before, {after:+.3f} m after correction")
        assert abs(after) < 0.05 * PX
    # what was removed is the known misregistration
    assert 4.0 <= abs(rec["offset_ew"]) <= 11.0
    assert 14.0 <= abs(rec["offset_ns"]) <= 22.0
    assert rec["stable_pixels"] > 300


def test_detector_footprints_from_a_real_msk_detfoo(shared_data):
    """The L2A product's MSK_DETFOO_B04 (JPEG 2000, baseline 04.00) on a 600 m grid: the
    detector numbers, and boundaries along the ground track of the fallback geometry."""
    from affine import Affine

    from tio.corrections import detector_footprints
    from tio.ingest import open_scene
    from tio.stack import Grid

    safe = (
        shared_data
        / "sentinel2_safe"
        / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
    )
    scene = open_scene(safe, band="B04_60m")
    grid = Grid(scene.product.crs, Affine(600.0, 0, 499980.0, 0, -600.0, 5900040.0), (183, 183))
    det = detector_footprints(scene, grid)
    assert set(np.unique(det)) == {0, 9, 10, 11, 12}
    heading = track_heading(grid.crs, tuple(grid.transform)[:6], grid.shape)
    rows, cols = [], []
    for r in range(183):
        c = np.nonzero(det[r] == 12)[0]
        if c.size and c[0] > 0 and det[r, c[0] - 1] == 11:
            rows.append(r)
            cols.append(c[0])
    slope = np.polyfit(np.array(rows, float), np.array(cols, float), 1)[0]
    azimuth = math.atan2(slope, -1.0)  # boundary direction going south
    assert abs(math.degrees(azimuth - heading)) < 3.0
    # a scene without a SAFE product has no footprints
    assert detector_footprints(type("S", (), {"product": None, "path": "x.tif"})(), grid) is None


def test_detector_footprints_from_gml_before_baseline_04(tmp_path):
    """Older products give MSK_DETFOO as GML polygons, one feature per detector."""
    from affine import Affine

    from tio.corrections import detector_footprints
    from tio.stack import Grid

    def feature(det, x0, x1):
        ring = f"{x0} 5200000 0 {x1} 5200000 0 {x1} 5190000 0 {x0} 5190000 0 {x0} 5200000 0"
        return (
            f'<eop:MaskFeature gml:id="detector_footprint-B04-{det:02d}-0"><eop:extentOf>'
            '<gml:Polygon><gml:exterior><gml:LinearRing><gml:posList srsDimension="3">'
            f"{ring}</gml:posList></gml:LinearRing></gml:exterior></gml:Polygon>"
            "</eop:extentOf></eop:MaskFeature>"
        )

    gml = tmp_path / "MSK_DETFOO_B04.gml"
    gml.write_text(
        '<eop:Mask xmlns:eop="http://www.opengis.net/eop/2.0" '
        'xmlns:gml="http://www.opengis.net/gml/3.2">'
        '<gml:boundedBy><gml:Envelope srsName="urn:ogc:def:crs:EPSG::32632"/></gml:boundedBy>'
        "<eop:maskMembers>"
        + feature(3, 300000, 305000)
        + feature(4, 305000, 310000)
        + "</eop:maskMembers></eop:Mask>"
    )
    product = type("P", (), {"masks": {"DETFOO_B04": str(gml)}, "crs": "EPSG:32632"})()
    scene = type("S", (), {"product": product, "path": "T32_B04.jp2"})()
    grid = Grid("EPSG:32632", Affine(500.0, 0, 300000.0, 0, -500.0, 5200000.0), (20, 20))
    det = detector_footprints(scene, grid)
    assert (det[:, :10] == 3).all() and (det[:, 10:] == 4).all()


def test_detector_numbers_sampled_at_the_pair_window_centres():
    from tio.pipeline import _on_pair_grid

    stack = xr.Dataset(
        {"image": (("y", "x"), np.zeros((100, 120), "float32"))},
        attrs={"transform": [10.0, 0, 1000.0, 0, -10.0, 5000.0]},
    )
    det = np.zeros((100, 120), np.uint8)
    det[:, 60:] = 7
    # a pair grid: one value every 8 pixels at the centre of 32-pixel windows
    pair = _pair(np.zeros((9, 11)), np.zeros((9, 11)), np.ones((9, 11)), 80.0, None, 1120.0, 4880.0)
    got = _on_pair_grid(det, stack, pair)
    cols = np.floor((pair["x"].values - 1000.0) / 10.0).astype(int)
    assert got.shape == (9, 11)
    assert (got[0] == np.where(cols >= 60, 7, 0)).all()
