"""Procedural synthetic optical scenes with a known ground displacement.

:func:`make_scene` draws a Sentinel-2-like landscape (field parcels, forests,
villages, roads, a river, hill shading from a fractal terrain, fine texture),
puts an accelerating landslide lobe on it and writes one single-band GeoTIFF
per date plus a NetCDF file with the truth. Nothing is downloaded: the same
seed always gives the same files, so ``tio demo`` and the tests can score the
whole processing chain against the known answer.

Sign conventions (the same as TIO's products):

* east-west displacement is positive towards the EAST: image content moves
  towards increasing column;
* north-south displacement is positive towards the NORTH: image content moves
  towards *decreasing* row (rows grow southward).

Image model. ``T`` is the (margin-padded) ground reflectance of a date in the
ground frame and ``phi_t(X) = X + U(X, t)`` the ground motion (``U`` is zero at
the first date and outside the lobe). The image of date ``t`` is::

    I_t(x) = T_t(phi_t^-1(x - m_t))

with ``m_t`` the misregistration (a translation of the whole image). So the
ground point at ``X`` on the first date shows at ``X + U(X, t) + m_t`` on date
``t``. The truth stores ``U`` on the map grid (``cumulative_ew``/``_ns``, the
displacement of the ground point that sits at the pixel centre at the first
date: what a correlator measures against the first date once the
misregistration is removed) and ``m_t`` separately; the truth is ground
motion only.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree

from tio.errors import ConfigError, OutputError

__all__ = ["BAND_DESCRIPTION", "DN_SCALE", "SyntheticScene", "make_scene"]

DN_SCALE = 10000.0
"""Digital numbers are reflectance times this (Sentinel-2 L1C quantification)."""

BAND_DESCRIPTION = "B04 red: synthetic top-of-atmosphere reflectance x 10000 (Sentinel-2 L1C-like)"
_ORIGIN = (350000.0, 5100000.0)  # upper-left corner, a plausible UTM position
_REVISIT_DAYS = 5
_MIN_SIDE = 96
_PSF_SIGMA = 0.6  # pixels: sensor point spread function (anti-aliases edges)
_SPLINE_ORDER = 3
_MAX_STRAIN = 0.45  # largest displacement gradient allowed in the lobe
_FOREST, _URBAN, _CROP, _GRASS = 0, 1, 2, 3


@dataclass(frozen=True)
class SyntheticScene:
    """Files and geometry of a scene written by :func:`make_scene`."""

    paths: tuple[Path, ...]
    dates: tuple[_dt.date, ...]
    truth_path: Path
    crs: str
    transform: tuple[float, ...]
    shape: tuple[int, int]

    def truth(self) -> xr.Dataset:
        """The truth (loaded in memory; the file is closed again)."""
        with xr.open_dataset(self.truth_path, engine="h5netcdf") as ds:
            return ds.load()


# ----------------------------------------------------------------------------- helpers


def _fractal(
    rng: np.random.Generator,
    shape: tuple[int, int],
    beta: float,
    f_lo: float = 0.0,
    f_hi: float | None = None,
) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum ~ 1/f**beta (f in cycles/pixel)."""
    h, w = shape
    fy = sfft.fftfreq(h)[:, None]
    fx = sfft.rfftfreq(w)[None, :]
    f2 = fx * fx + fy * fy
    f2[0, 0] = 1.0
    amp = (f2 + f_lo * f_lo) ** (-beta / 4.0)
    amp[0, 0] = 0.0
    if f_hi is not None:
        amp *= np.exp(-f2 / (f_hi * f_hi))
    spec = sfft.rfft2(rng.standard_normal(shape, dtype=np.float32), workers=-1)
    out = sfft.irfft2(spec * amp, s=shape, workers=-1)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out.astype(np.float32)


def _grain(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Pixel-scale texture: blurred white noise, unit std."""
    g = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (g / (g.std() + 1e-12)).astype(np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _seasonal(doy: float, peak_doy: float = 15.0) -> float:
    """Cosine of the season, +1 at ``peak_doy``."""
    return math.cos(2.0 * math.pi * (doy - peak_doy) / 365.25)


def _acquisition_dates(
    rng: np.random.Generator, start: _dt.date, n: int, span_days: int
) -> list[_dt.date]:
    """``n`` dates on the 5-day revisit grid, first = start, irregular gaps."""
    last = span_days // _REVISIT_DAYS
    seg = last / (n - 1)
    steps = [0]
    for i in range(1, n - 1):
        k = round(i * seg + rng.uniform(-0.45, 0.45) * seg)
        k = min(max(k, steps[-1] + 1), last - (n - 1 - i))
        steps.append(k)
    steps.append(last)
    return [start + _dt.timedelta(days=_REVISIT_DAYS * k) for k in steps]


@dataclass
class _Lobe:
    """Elliptic landslide lobe in pixel coordinates of the scene grid."""

    row: float
    col: float
    a: float  # semi-axis along the motion (pixels)
    b: float  # semi-axis across the motion (pixels)
    azimuth: float  # motion direction, degrees clockwise from north

    @property
    def unit_rc(self) -> tuple[float, float]:
        """Motion direction as (d row, d col) unit vector."""
        az = math.radians(self.azimuth)
        return -math.cos(az), math.sin(az)

    def coords(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Along- and across-motion coordinates (pixels) relative to the centre."""
        dr, dc = self.unit_rc
        y = rows - self.row
        x = cols - self.col
        return x * dc + y * dr, -x * dr + y * dc

    def r2(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        along, across = self.coords(rows, cols)
        return (along / self.a) ** 2 + (across / self.b) ** 2

    def profile(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """1 at the centre, smooth (C1) taper to 0 at the edge of the ellipse."""
        r2 = self.r2(rows, cols)
        return np.where(r2 < 1.0, (1.0 - np.minimum(r2, 1.0)) ** 2, 0.0)


def _inverse_motion(rows: np.ndarray, cols: np.ndarray, lobe: _Lobe, amp_px: float) -> None:
    """Replace positions y (in place) by the ground points X that move there: X + U(X) = y.

    ``U`` is the lobe motion of amplitude ``amp_px`` pixels at its centre. Solved by the
    fixed point X = y - U(X), a contraction because |grad U| <= _MAX_STRAIN < 1.
    """
    if amp_px <= 0:
        return
    reach = max(lobe.a, lobe.b) + amp_px + 2.0
    sel = (np.abs(rows - lobe.row) < reach) & (np.abs(cols - lobe.col) < reach)
    if not sel.any():
        return
    yr, yc = rows[sel], cols[sel]
    xr, xc = yr.copy(), yc.copy()
    dr, dc = lobe.unit_rc
    for _ in range(100):
        p = amp_px * lobe.profile(xr, xc)
        nr, nc = yr - p * dr, yc - p * dc
        step = max(float(np.abs(nr - xr).max()), float(np.abs(nc - xc).max()))
        xr, xc = nr, nc
        if step < 1e-7:
            break
    rows[sel], cols[sel] = xr, xc


def _time_function(offsets: np.ndarray, tau_fraction: float = 1.0 / 3.0) -> np.ndarray:
    """Convex (accelerating) normalised curve: 0 at the first date, 1 at the last."""
    total = float(offsets[-1])
    tau = tau_fraction * total
    return np.expm1(offsets / tau) / math.expm1(total / tau)


# ----------------------------------------------------------------------------- landscape


@dataclass
class _Landscape:
    """Static ground description in the padded frame; :meth:`reflectance` renders a date."""

    labels: np.ndarray
    cls: np.ndarray  # per parcel
    tex: np.ndarray  # per-pixel texture (unit std), chosen by class
    tex_amp: np.ndarray  # per parcel
    stripes: np.ndarray  # per-pixel cosine pattern (tillage / crop rows)
    stripe_amp: np.ndarray  # per parcel (crops when bare)
    r_soil: np.ndarray
    r_veg: np.ndarray
    peak_doy: np.ndarray
    width_doy: np.ndarray
    seas_amp: np.ndarray  # grass / forest winter brightening
    overlays: list[tuple[np.ndarray, np.ndarray | float]]  # (alpha, reflectance), in order
    grad_e: np.ndarray  # terrain slope dz/dEast
    grad_n: np.ndarray  # terrain slope dz/dNorth
    inv_norm: np.ndarray  # 1/sqrt(1 + |grad|^2)
    latitude: float

    def reflectance(self, date: _dt.date, rng: np.random.Generator) -> np.ndarray:
        """Ground reflectance of one date (seasonal and per-field changes, sun, PSF)."""
        doy = date.timetuple().tm_yday
        n = self.cls.size
        d = (doy - self.peak_doy + 182.5) % 365.25 - 182.5
        green = np.exp(-0.5 * (d / self.width_doy) ** 2)
        base = np.where(
            self.cls == _CROP,
            self.r_soil * (1.0 - green) + self.r_veg * green,
            self.r_soil * (1.0 + self.seas_amp * _seasonal(doy)),
        )
        base = base * rng.normal(1.0, 0.04, n)  # per-field random change
        stripe = np.where(self.cls == _CROP, self.stripe_amp * (1.0 - 0.7 * green), 0.0)
        lab = self.labels
        expo = self.tex_amp.astype(np.float32)[lab] * self.tex
        expo += stripe.astype(np.float32)[lab] * self.stripes
        r = base.astype(np.float32)[lab] * np.exp(expo)
        for alpha, value in self.overlays:
            r += alpha * (value - r)
        # terrain shading for a morning Sentinel-2 overpass at this latitude and season
        elev = math.radians(max(12.0, 90.0 - self.latitude + 23.44 * _seasonal(doy, 172.0) - 5.0))
        az = math.radians(155.0 - 8.0 * _seasonal(doy, 172.0))
        s_e, s_n = math.sin(az) * math.cos(elev), math.cos(az) * math.cos(elev)
        s_u = math.sin(elev)
        hs = (s_u - self.grad_e * s_e - self.grad_n * s_n) * self.inv_norm / s_u
        r *= 0.3 + 0.7 * np.clip(hs, 0.0, 2.5)
        return ndimage.gaussian_filter(r, _PSF_SIGMA)


def _polyline(
    rng: np.random.Generator, shape: tuple[int, int], wiggle: float, corr: float
) -> np.ndarray:
    """A smooth random path (row, col points every 0.5 px) crossing the grid."""
    h, w = shape
    side = rng.integers(4)
    t = rng.uniform(0.15, 0.85)
    start, heading = {
        0: ((0.0, t * w), 0.5 * math.pi),  # from the north edge, heading south
        1: ((h - 1.0, t * w), -0.5 * math.pi),
        2: ((t * h, 0.0), 0.0),  # from the west edge, heading east
        3: ((t * h, w - 1.0), math.pi),
    }[int(side)]
    heading += rng.uniform(-0.5, 0.5)
    n = int(4 * (h + w))
    dev = ndimage.gaussian_filter1d(rng.normal(0.0, 1.0, n), corr)
    ang = heading + dev * (wiggle / (dev.std() + 1e-12))
    rows = start[0] + 0.5 * np.cumsum(np.sin(ang))
    cols = start[1] + 0.5 * np.cumsum(np.cos(ang))
    inside = (rows >= -5) & (rows <= h + 4) & (cols >= -5) & (cols <= w + 4)
    stop = np.argmin(inside) if not inside.all() else n
    stop = max(int(stop), 2)
    return np.stack([rows[:stop], cols[:stop]], axis=1)


def _coarse_distance(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Distance (pixels, +-0.5) to the pixels a polyline passes through."""
    h, w = shape
    mask = np.ones(shape, dtype=bool)
    ij = np.round(points).astype(int)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < h) & (ij[:, 1] >= 0) & (ij[:, 1] < w)
    mask[ij[ok, 0], ij[ok, 1]] = False
    if mask.all():
        return np.full(shape, np.inf)
    return ndimage.distance_transform_edt(mask)


def _line_distance(points: np.ndarray, shape: tuple[int, int], reach: float) -> np.ndarray:
    """Exact distance (pixels) to a polyline, up to ``reach``; ``inf`` further away."""
    dist = np.full(shape, np.inf, dtype=np.float32)
    coarse = _coarse_distance(points, shape)
    near = np.nonzero(coarse < reach + 1.0)
    if near[0].size:
        d, _ = cKDTree(points).query(np.stack(near, axis=1), workers=-1)
        dist[near] = d
    return dist


def _strip_parcels(
    rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Field parcels: blocks of differently oriented strips cut into fields.

    Returns the parcel label of every pixel and each parcel's orientation (radians).
    """
    h, w = rows.shape
    diag = math.hypot(h, w)
    # blocks of land with their own orientation (coarse Voronoi cells, about 1.5 km)
    n_blocks = max(2, round(h * w / 150.0**2))
    centres = rng.uniform(0, 1, (n_blocks, 2)) * (h, w)
    _, block = cKDTree(centres).query(np.stack([rows.ravel(), cols.ravel()], 1), workers=-1)
    block = block.reshape(h, w)
    theta = rng.uniform(0.0, math.pi, n_blocks)
    # gently bending field edges
    warp_r = 3.0 * _fractal(rng, (h, w), beta=4.0, f_lo=1.0 / 60.0, f_hi=1.0 / 20.0)
    warp_c = 3.0 * _fractal(rng, (h, w), beta=4.0, f_lo=1.0 / 60.0, f_hi=1.0 / 20.0)
    y = rows + warp_r - h / 2
    x = cols + warp_c - w / 2
    ct, st = np.cos(theta)[block], np.sin(theta)[block]
    u = x * ct + y * st + diag  # along the strips, >= 0
    v = -x * st + y * ct + diag  # across the strips, >= 0
    span = 2.0 * diag + 8.0  # u and v lie in [0, span)
    big = span + 100.0  # key offset between blocks / strips
    # strips across, 80-300 m wide
    widths = rng.uniform(8.0, 30.0, (n_blocks, int(span / 8.0) + 2))
    edges_v = np.minimum(np.cumsum(widths, axis=1), span)
    edges_v += (np.arange(n_blocks) * big)[:, None]
    strip = np.searchsorted(edges_v.ravel(), block * big + v)
    n_strips = edges_v.size + 1
    # fields along each strip, 150-700 m long; a random shift per strip breaks the grid
    lengths = rng.uniform(15.0, 70.0, (n_strips, int(span / 15.0) + 3))
    edges_u = np.minimum(np.cumsum(lengths, axis=1) - rng.uniform(0, 70.0, (n_strips, 1)), span)
    edges_u += (np.arange(n_strips) * big)[:, None]
    field = np.searchsorted(edges_u.ravel(), strip * big + u)
    uniq, labels = np.unique(field, return_inverse=True)
    labels = labels.reshape(h, w).astype(np.int32)
    first = np.zeros(uniq.size, dtype=np.int64)
    first[labels.ravel()] = np.arange(labels.size)
    return labels, theta[block.ravel()[first]]


def _build_landscape(
    seeds: Callable[[int], np.random.Generator],
    shape: tuple[int, int],
    margin: int,
    pixel_size: float,
    lobe: _Lobe,
    latitude: float,
) -> _Landscape:
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)

    # --- terrain: fractal DEM, flatter valleys, a slope under the landslide, a river valley
    rng = seeds(10)
    z = _fractal(rng, shape, beta=4.2, f_lo=1.0 / (1.5 * max(h, w)))
    z = (z - z.min()) / (z.max() - z.min())
    z = z**1.4
    dz_r, dz_c = np.gradient(z)
    rms = float(np.sqrt(np.mean(dz_c**2 + dz_r**2))) / pixel_size
    z *= 0.13 / rms  # metres; RMS slope about 7 degrees
    # landslide slope: descends along the motion direction under the lobe
    lp = _Lobe(lobe.row + margin, lobe.col + margin, lobe.a, lobe.b, lobe.azimuth)
    along, across = lp.coords(rows, cols)
    env = np.exp(-0.5 * ((along / (2.2 * lobe.a)) ** 2 + (across / (2.5 * lobe.b)) ** 2))
    z -= 0.3 * along * pixel_size * env
    river = _polyline(seeds(11), shape, wiggle=0.7, corr=30.0)
    d_river = _line_distance(river, shape, reach=6.0)
    valley = np.minimum(d_river, _coarse_distance(river, shape)).astype(np.float32)
    vw = 30.0
    z -= 0.12 * vw * pixel_size * np.exp(-((valley / vw) ** 2))
    dz_r, dz_c = np.gradient(z)
    grad_e = (dz_c / pixel_size).astype(np.float32)
    grad_n = (-dz_r / pixel_size).astype(np.float32)
    inv_norm = (1.0 / np.sqrt(1.0 + grad_e**2 + grad_n**2)).astype(np.float32)
    z_norm = (z - z.min()) / (np.ptp(z) + 1e-9)

    # --- land cover: fields, forest on high ground, villages
    rng = seeds(20)
    labels, field_theta = _strip_parcels(rng, rows, cols)
    n_fields = field_theta.size
    lowf = _fractal(rng, shape, beta=4.0, f_lo=1.0 / 80.0)
    score = z_norm + 0.12 * lowf
    forest = score > np.quantile(score, 0.7)
    forest = ndimage.binary_opening(forest, iterations=2)
    n_stand = 4  # forest stand types (evergreen .. deciduous), smooth boundaries
    stand = np.digitize(_fractal(rng, shape, beta=3.5, f_lo=1.0 / 50.0), [-0.6, 0.0, 0.6])
    labels = np.where(forest, n_fields + stand, labels)
    urban = np.zeros(shape, dtype=bool)
    n_vill = max(1, round(h * w / 450.0**2))
    blob = _fractal(rng, shape, beta=3.0, f_lo=1.0 / 20.0)
    for _ in range(n_vill):
        for _attempt in range(20):
            vr, vc = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
            if not forest[int(vr), int(vc)] and lp.r2(np.array(vr), np.array(vc)) > 4.0:
                break
        radius = rng.uniform(12.0, 25.0)
        urban |= np.hypot(rows - vr, cols - vc) < radius * (1.0 + 0.3 * blob)
    urban &= ~forest
    # building blocks, 30-60 m, each with its own roof/street brightness
    bs = rng.uniform(3.0, 6.0)
    blk = (np.floor((rows + 1.5 * blob) / bs) * (w // 2 + 1) + np.floor(cols / bs)).astype(np.int64)
    ub, ulab = np.unique(blk[urban], return_inverse=True)
    n_forest_end = n_fields + n_stand
    labels[urban] = n_forest_end + ulab
    n = n_forest_end + ub.size

    cls = np.full(n, _CROP)
    cls[:n_fields] = np.where(rng.random(n_fields) < 0.65, _CROP, _GRASS)
    cls[n_fields:n_forest_end] = _FOREST
    cls[n_forest_end:] = _URBAN
    r_soil = np.select(
        [cls == _CROP, cls == _GRASS, cls == _FOREST],
        [rng.uniform(0.09, 0.23, n), rng.uniform(0.040, 0.075, n), rng.uniform(0.025, 0.040, n)],
        rng.lognormal(math.log(0.12), 0.35, n),
    )
    r_veg = rng.uniform(0.030, 0.055, n)
    peak_doy = np.where(rng.random(n) < 0.5, 140.0, 205.0) + rng.normal(0.0, 15.0, n)
    width_doy = rng.uniform(28.0, 55.0, n)
    seas_amp = np.select(
        [cls == _GRASS, cls == _FOREST],
        [rng.uniform(0.05, 0.2, n), np.linspace(0.0, 0.35, n)],
        0.0,
    )
    tex_amp = np.select(
        [cls == _CROP, cls == _GRASS, cls == _FOREST],
        [rng.uniform(0.07, 0.13, n), rng.uniform(0.08, 0.14, n), np.full(n, 0.25)],
        rng.uniform(0.10, 0.25, n),
    )
    stripe_amp = rng.uniform(0.02, 0.07, n)
    period = rng.uniform(3.0, 9.0, n)
    ang = np.zeros(n)
    ang[:n_fields] = field_theta + np.where(rng.random(n_fields) < 0.7, 0.0, 0.5 * math.pi)
    phase = rng.uniform(0.0, 2 * math.pi, n)

    # per-pixel textures
    cls_pix = cls[labels]
    field_tex = 0.75 * _fractal(rng, shape, beta=2.0, f_lo=1.0 / 60.0)
    field_tex += 0.65 * _grain(rng, shape, 0.7)
    canopy = 0.8 * _grain(rng, shape, 1.0) + 0.6 * _fractal(rng, shape, beta=1.6, f_lo=1 / 30.0)
    tex = np.where(cls_pix == _FOREST, canopy, field_tex)
    tex = np.where(cls_pix == _URBAN, 0.5 * _grain(rng, shape, 0.5), tex)
    tex = (tex / tex.std()).astype(np.float32)
    stripes = np.cos(
        2 * math.pi * (cols * np.cos(ang)[labels] + rows * np.sin(ang)[labels]) / period[labels]
        + phase[labels]
    ).astype(np.float32)

    overlays: list[tuple[np.ndarray, np.ndarray | float]] = []
    # hedgerows (dark) and farm tracks (bright) along some field boundaries
    is_field = labels < n_fields
    edge = np.zeros(shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge &= is_field
    kind = rng.random(n)
    hedge = (edge & (kind < 0.3)[labels]).astype(np.float32) * 0.6
    track = (edge & (kind > 0.85)[labels]).astype(np.float32) * 0.5
    overlays.append((hedge, 0.030))
    overlays.append((track, 0.16))

    # landslide deposit: disturbed, partly bare ground, hummocky, with a bright head scarp
    rng = seeds(30)
    rr = np.sqrt(lp.r2(rows, cols))
    edge_noise = 0.08 * _fractal(rng, shape, beta=3.0, f_lo=1.0 / 15.0)
    slide_w = 0.7 * _smoothstep((1.0 + edge_noise - rr) / 0.35)
    hummock = _fractal(rng, shape, beta=2.6, f_lo=1.0 / 25.0)
    slide_r = 0.085 * np.exp(0.3 * hummock + 0.1 * _grain(rng, shape, 0.6))
    scarp = _smoothstep(1.0 - np.abs(rr + edge_noise - 0.92) / 0.1)
    scarp *= _smoothstep(-along / lobe.a * 2.0)
    slide_r = slide_r * (1 - scarp) + 0.2 * scarp
    slide_w = np.maximum(slide_w, 0.8 * scarp).astype(np.float32)
    overlays.append((slide_w, slide_r.astype(np.float32)))

    # roads: thin bright lines; river: dark water with riparian trees
    n_roads = 2 + round(h * w / 350.0**2)
    road_alpha = np.zeros(shape, dtype=np.float32)
    for k in range(n_roads):
        pts = _polyline(seeds(40 + k), shape, wiggle=0.12, corr=150.0)
        d = _line_distance(pts, shape, reach=4.0)
        road_alpha = np.maximum(road_alpha, 0.7 * np.exp(-0.5 * (d / 0.55) ** 2))
    # riparian trees (canopy texture) along the banks, then the water, 20-30 m wide
    riparian = (0.75 * _smoothstep((5.5 - d_river) / 2.0)).astype(np.float32)
    overlays.append((riparian, (0.032 * np.exp(0.25 * canopy)).astype(np.float32)))
    water = _smoothstep((1.4 - d_river) / 0.8).astype(np.float32)
    overlays.append((water, 0.020))
    overlays.append((road_alpha, 0.13))

    return _Landscape(
        labels=labels,
        cls=cls,
        tex=tex,
        tex_amp=tex_amp,
        stripes=stripes,
        stripe_amp=stripe_amp,
        r_soil=r_soil,
        r_veg=r_veg,
        peak_doy=peak_doy,
        width_doy=width_doy,
        seas_amp=seas_amp,
        overlays=overlays,
        grad_e=grad_e,
        grad_n=grad_n,
        inv_norm=inv_norm,
        latitude=latitude,
    )


# ----------------------------------------------------------------------------- clouds


def _clouds(
    rng: np.random.Generator, shape: tuple[int, int], pixel_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cloud opacity, cloud reflectance and shadow opacity on the scene grid."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 5))):
        cr, cc = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        sig = rng.uniform(0.08, 0.2) * min(h, w)
        field += rng.uniform(0.6, 1.0) * np.exp(
            -0.5 * ((rows - cr) ** 2 + (cols - cc) ** 2) / sig**2
        )
    field *= np.exp(0.8 * _fractal(rng, shape, beta=3.3, f_lo=1.0 / (0.3 * min(h, w))))
    fraction = rng.uniform(0.06, 0.24)
    thr = np.quantile(field, 1.0 - fraction)
    core = np.quantile(field[field > thr], 0.7)
    alpha = _smoothstep((field - thr) / max(core - thr, 1e-9))
    alpha[field <= thr] = 0.0
    body = _fractal(rng, shape, beta=3.4, f_lo=1.0 / 60.0)
    cloud_r = 0.38 + 0.25 * np.sqrt(alpha) + 0.07 * body
    # shadow cast away from the sun (sun in the south-south-east): towards north-north-west
    length = rng.uniform(300.0, 1200.0) / pixel_size
    az = math.radians(rng.uniform(145.0, 165.0))
    shift = (length * math.cos(az), -length * math.sin(az))  # (rows, cols)
    shadow = ndimage.shift(alpha, shift, order=1, mode="constant", cval=0.0)
    shadow = np.where(alpha > 0, 0.0, 0.55 * shadow).astype(np.float32)
    return alpha.astype(np.float32), cloud_r.astype(np.float32), shadow


# ----------------------------------------------------------------------------- writing


def _replace(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc}") from exc


def _write_tif(
    path: Path,
    dn: np.ndarray,
    crs: CRS,
    transform: Affine,
    date: _dt.date,
    valid: np.ndarray | None = None,
) -> None:
    tmp = path.with_name(f".{path.name}.part")
    profile = {
        "driver": "GTiff",
        "height": dn.shape[0],
        "width": dn.shape[1],
        "count": 1,
        "dtype": "uint16",
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "predictor": 2,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(dn, 1)
            if valid is not None:  # the product's cloud mask, as a GDAL mask band
                dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
            dst.set_band_description(1, BAND_DESCRIPTION)
            dst.update_tags(
                TIO_DATE=date.isoformat(),
                TIO_SYNTHETIC="1",
                SPACECRAFT="synthetic Sentinel-2",
                BAND="B04",
            )
    except (OSError, RasterioError) as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc}") from exc
    _replace(tmp, path)


# ----------------------------------------------------------------------------- main


def _check(name: str, ok: bool, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"make_scene: {name}={value!r} is invalid; allowed: {allowed}")


def make_scene(
    out_dir: str | os.PathLike[str],
    *,
    shape: tuple[int, int] = (400, 400),
    n_dates: int = 12,
    start: str | _dt.date = "2021-03-01",
    span_days: int = 730,
    pixel_size: float = 10.0,
    crs: str = "EPSG:32632",
    seed: int = 0,
    max_displacement: float = 40.0,
    misregistration: float = 3.0,
    noise: float = 0.01,
    cloudy_dates: int = 3,
    cloud_mask: bool = True,
) -> SyntheticScene:
    """Write a synthetic image time series with a moving landslide and its truth.

    Parameters are in metres (``pixel_size``, ``max_displacement``, the
    per-axis standard deviation ``misregistration``) and days; ``noise`` is the
    standard deviation of the per-date Gaussian noise relative to the image's
    reflectance range (1st to 99th percentile). ``cloudy_dates`` dates (never
    the first) get clouds and their shadows. See the module docstring for the
    image model and sign conventions.

    Images ``S2_YYYYMMDD.tif`` left in ``out_dir`` by an earlier scene (another
    seed or number of dates) are removed, so that the folder holds one time series.

    With ``cloud_mask`` (default), each image carries the cloud mask a product
    would give, as a GDAL mask band: the opaque part of the clouds and their dark
    shadows (``alpha > 0.2`` or shadow > 0.2); thin cloud edges stay unmasked, as
    real masks miss them.
    """
    rows_n, cols_n = (int(v) for v in shape)
    _check("shape", min(rows_n, cols_n) >= _MIN_SIDE, shape, f"both sides >= {_MIN_SIDE}")
    _check("seed", int(seed) >= 0, seed, "an integer >= 0")
    _check("n_dates", int(n_dates) >= 2, n_dates, "an integer >= 2")
    n_dates = int(n_dates)
    try:
        start_date = start if isinstance(start, _dt.date) else _dt.date.fromisoformat(str(start))
    except ValueError:
        start_date = None
    _check("start", start_date is not None, start, "an ISO date such as 2021-03-01")
    assert start_date is not None
    _check(
        "span_days",
        int(span_days) >= _REVISIT_DAYS * (n_dates - 1),
        span_days,
        f">= {_REVISIT_DAYS} * (n_dates - 1) days (5-day revisit)",
    )
    _check("pixel_size", pixel_size > 0, pixel_size, "a positive size in metres")
    _check("max_displacement", max_displacement >= 0, max_displacement, ">= 0 metres")
    _check("misregistration", misregistration >= 0, misregistration, ">= 0 metres")
    _check("noise", noise >= 0, noise, ">= 0")
    _check(
        "cloudy_dates",
        0 <= int(cloudy_dates) <= n_dates - 1,
        cloudy_dates,
        "0 .. n_dates - 1 (the first date is always clear)",
    )
    try:
        crs_obj = CRS.from_user_input(crs)
    except CRSError as exc:
        raise ConfigError(f"make_scene: crs={crs!r} is invalid: {exc}") from exc
    _check("crs", crs_obj.is_projected, crs, "a projected CRS in metres (e.g. EPSG:32632)")

    def seeds(k: int) -> np.random.Generator:
        """An independent generator per component: changing one leaves the others alone."""
        return np.random.default_rng(np.random.SeedSequence([int(seed), k]))

    # ---- dates, motion, misregistration
    dates = _acquisition_dates(seeds(1), start_date, n_dates, int(span_days))
    offsets = np.array([(d - dates[0]).days for d in dates], dtype=float)
    amplitude = _time_function(offsets) * float(max_displacement)  # metres at the lobe centre
    rng = seeds(2)
    side = min(rows_n, cols_n)
    d_max_px = float(max_displacement) / pixel_size
    # lobe about 1/6 of the scene wide; wider in small scenes if the strain would be too
    # high: |grad U| <= 1.54 * d_max_px / b must stay well below 1 (no fold-over)
    needed = d_max_px * 1.54 / _MAX_STRAIN
    _check(
        "max_displacement",
        needed <= side / 6.0,
        max_displacement,
        f"<= {_MAX_STRAIN * side / 6.0 / 1.54 * pixel_size:.0f} m for this shape and pixel "
        "size (the lobe would fold over itself)",
    )
    b = max(side / 12.0, needed)
    a = 1.5 * b
    lobe = _Lobe(
        row=float(round(rng.uniform(0.35, 0.65) * (rows_n - 1))),
        col=float(round(rng.uniform(0.35, 0.65) * (cols_n - 1))),
        a=a,
        b=b,
        azimuth=float(rng.uniform(115.0, 155.0)),
    )
    mis = seeds(3).normal(0.0, float(misregistration), (n_dates, 2))  # (ew, ns) metres
    cloudy = set()
    if cloudy_dates:
        cloudy = {int(i) for i in seeds(4).choice(np.arange(1, n_dates), cloudy_dates, False)}

    # ---- geometry
    x0, y0 = _ORIGIN
    transform = Affine(pixel_size, 0.0, x0, 0.0, -pixel_size, y0)
    lat = 46.0
    try:
        _, lats = warp_transform(crs_obj, "EPSG:4326", [x0], [y0])
        if math.isfinite(lats[0]):
            lat = float(lats[0])
    except Exception:  # noqa: BLE001 - any failure: keep a mid-latitude sun
        pass
    margin = int(math.ceil(d_max_px + 6.0 * misregistration / pixel_size)) + 8
    pshape = (rows_n + 2 * margin, cols_n + 2 * margin)
    land = _build_landscape(seeds, pshape, margin, pixel_size, lobe, lat)

    # ---- truth on the map grid
    rr, cc = np.mgrid[0:rows_n, 0:cols_n].astype(np.float64)
    prof = lobe.profile(rr, cc)
    dr_u, dc_u = lobe.unit_rc
    east_u, north_u = dc_u, -dr_u
    cum_ew = (amplitude[:, None, None] * prof[None] * east_u).astype(np.float32)
    cum_ns = (amplitude[:, None, None] * prof[None] * north_u).astype(np.float32)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc}") from exc

    paths: list[Path] = []
    cloud_masks = np.zeros((n_dates, rows_n, cols_n), dtype=np.uint8)
    shadow_masks = np.zeros((n_dates, rows_n, cols_n), dtype=np.uint8)
    radiometry_rng = seeds(5)
    field_rng = seeds(6)
    noise_rng = seeds(7)
    for k, date in enumerate(dates):
        ground = land.reflectance(date, field_rng)
        # sampling positions: ground point shown at scene pixel x is phi^-1(x - m)
        m_r = mis[k, 1] / pixel_size  # content moves north -> row decreases
        m_c = mis[k, 0] / pixel_size
        sr = rr + m_r
        sc = cc - m_c
        _inverse_motion(sr, sc, lobe, amplitude[k] / pixel_size)
        img = ndimage.map_coordinates(
            ground, [sr + margin, sc + margin], order=_SPLINE_ORDER, mode="nearest"
        ).astype(np.float32)
        img = np.maximum(img, 0.003)
        # atmosphere / calibration: gain, slight gamma, path radiance offset
        gain = radiometry_rng.uniform(0.92, 1.08)
        offset = radiometry_rng.uniform(0.015, 0.035)
        gamma = radiometry_rng.uniform(0.95, 1.05)
        img = gain * 0.12 * (img / 0.12) ** gamma
        lo, hi = np.percentile(img[::3, ::3], [1.0, 99.0])  # clear-sky reflectance range
        # clouds and their shadows (in the image frame: they do not move with the ground)
        if k in cloudy:
            alpha, cloud_r, shadow = _clouds(seeds(100 + k), (rows_n, cols_n), pixel_size)
            img *= 1.0 - shadow
            img += offset
            img += alpha * (cloud_r - img)
            cloud_masks[k] = alpha > 0
            shadow_masks[k] = shadow > 0.05
        else:
            img += offset
        if noise > 0:
            img += noise_rng.normal(0.0, noise * (hi - lo), img.shape).astype(np.float32)
        dn = np.clip(np.rint(img * DN_SCALE), 1, 65535).astype(np.uint16)
        path = out / f"S2_{date:%Y%m%d}.tif"
        valid = None
        if cloud_mask and k in cloudy:
            valid = ~((alpha > 0.2) | (shadow > 0.2))
        _write_tif(path, dn, crs_obj, transform, date, valid)
        paths.append(path)

    # images of an earlier scene written to this folder (another seed or number of
    # dates) would be read with these as one time series: remove them
    for stale in sorted(set(out.glob("S2_????????.tif")) - set(paths)):
        try:
            stale.unlink()
        except OSError as exc:
            raise OutputError(f"cannot remove {stale}, left by an earlier scene: {exc}") from exc

    # ---- truth file
    xs = x0 + (np.arange(cols_n) + 0.5) * pixel_size
    ys = y0 - (np.arange(rows_n) + 0.5) * pixel_size
    lobe_x = x0 + (lobe.col + 0.5) * pixel_size
    lobe_y = y0 - (lobe.row + 0.5) * pixel_size
    dims3 = ("time", "y", "x")
    ds = xr.Dataset(
        {
            "cumulative_ew": (
                dims3,
                cum_ew,
                {"units": "m", "long_name": "cumulative ground displacement, positive east"},
            ),
            "cumulative_ns": (
                dims3,
                cum_ns,
                {"units": "m", "long_name": "cumulative ground displacement, positive north"},
            ),
            "misregistration_ew": (
                "time",
                mis[:, 0],
                {"units": "m", "long_name": "image translation (not ground motion), positive east"},
            ),
            "misregistration_ns": (
                "time",
                mis[:, 1],
                {
                    "units": "m",
                    "long_name": "image translation (not ground motion), positive north",
                },
            ),
            "cloud_mask": (dims3, cloud_masks, {"long_name": "1 = cloud"}),
            "shadow_mask": (dims3, shadow_masks, {"long_name": "1 = cloud shadow"}),
            "landslide_mask": (
                ("y", "x"),
                (prof > 0).astype(np.uint8),
                {"long_name": "1 = inside the moving lobe"},
            ),
        },
        coords={
            "time": ("time", np.array([np.datetime64(d, "ns") for d in dates])),
            "y": ("y", ys, {"units": "m", "long_name": "northing of pixel centre"}),
            "x": ("x", xs, {"units": "m", "long_name": "easting of pixel centre"}),
        },
        attrs={
            "title": "TIO synthetic scene truth",
            "crs": crs_obj.to_string(),
            "transform": list(transform)[:6],
            "pixel_size": float(pixel_size),
            "seed": int(seed),
            "sign_convention": "ew positive east (towards increasing column), "
            "ns positive north (towards decreasing row)",
            "displacement_definition": "displacement since the first date of the ground point "
            "at the pixel centre on the first date; misregistration is separate",
            "landslide_center_xy": [lobe_x, lobe_y],
            "landslide_azimuth_deg": lobe.azimuth,
            "landslide_semi_axes_m": [a * pixel_size, b * pixel_size],
            "max_displacement": float(max_displacement),
            "cloudy_dates": [dates[i].isoformat() for i in sorted(cloudy)] or "",
        },
    )
    truth_path = out / "truth.nc"
    tmp = out / ".truth.nc.part"
    enc = {
        v: {"zlib": True, "complevel": 4}
        for v in ("cumulative_ew", "cumulative_ns", "cloud_mask", "shadow_mask", "landslide_mask")
    }
    try:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=enc)
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {truth_path}: {exc}") from exc
    _replace(tmp, truth_path)

    return SyntheticScene(
        paths=tuple(paths),
        dates=tuple(dates),
        truth_path=truth_path,
        crs=crs_obj.to_string(),
        transform=tuple(float(v) for v in list(transform)[:6]),
        shape=(rows_n, cols_n),
    )
