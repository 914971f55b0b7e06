"""Animation of the cumulative displacement through time.

One frame per acquisition date, drawn with matplotlib and assembled with Pillow:
an animated PNG (APNG, loops forever, plays in every current browser) by default,
a GIF on request, an MP4 when ``ffmpeg`` is on the PATH. The colour scale is the
same on every frame (so growth is visible), the date is written on the frame and
a time bar shows where the date lies in the period; the last frame is held.

:func:`animate_map` draws the decorated frames (colour bar, scale bar, north arrow,
arrows over the greyscale reference image); :func:`animate_overlay` writes the same
frames without decoration, warped to EPSG:4326, for web maps.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from ._mapdecor import (  # noqa: E402
    SEQUENTIAL,
    georef,
    grid_convergence,
    symmetric_limit,
)
from .errors import OutputError  # noqa: E402
from .raster import atomic_path  # noqa: E402

__all__ = ["animate_map", "animate_overlay", "save_frames"]

Format = Literal["apng", "gif", "mp4"]
FRAME_MS = 600
LAST_FRAME_MS = 2000


def _magnitudes(ts: xr.Dataset) -> tuple[np.ndarray, float]:
    """Magnitude at every date, and one colour-scale maximum for all frames (the 99th
    percentile of the last date, where the displacement is largest)."""
    mag = np.hypot(ts["cumulative_ew"].values, ts["cumulative_ns"].values)
    return mag, max(symmetric_limit(mag[-1]), symmetric_limit(mag))


def animate_map(
    ts: xr.Dataset,
    path: str | Path,
    *,
    stack: xr.Dataset | None = None,
    fmt: Format = "apng",
    attribution: str | None = None,
) -> Path:
    """Animated map of the cumulative displacement magnitude, one frame per date."""
    from .quicklook import _arrows, _background, _draw_map, _units, iso_dates

    geo = georef(ts)
    mag, vmax = _magnitudes(ts)
    ew, ns = ts["cumulative_ew"].values, ts["cumulative_ns"].values
    dates = iso_dates(ts)
    times = ts["time"].values.astype("datetime64[D]").astype(float)
    fig, (ax, tax) = plt.subplots(
        2, 1, figsize=(7, 7.4), dpi=100, height_ratios=[1, 0.06], layout="constrained"
    )
    im = _draw_map(
        fig,
        ax,
        mag[0],
        geo,
        cmap=SEQUENTIAL,
        vmin=0,
        vmax=vmax,
        label="",
        units=f"cumulative displacement ({_units(ts)})",
        background=_background(stack),
        north=grid_convergence(geo),
    )
    stamp = ax.text(
        0.03,
        0.95,
        "",
        transform=ax.transAxes,
        fontsize=13,
        fontweight="bold",
        va="top",
        bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="none", alpha=0.8),
        zorder=7,
    )
    fig.suptitle(f"Cumulative displacement since {dates[0]}")
    # time bar: the period, a tick per date, the current date filled
    tax.set_xlim(times[0] - 1, times[-1] + 1)
    tax.set_ylim(0, 1)
    tax.set_yticks([])
    tax.plot(times, np.full_like(times, 0.5), "|", color="0.3", ms=12)
    fill = tax.axvspan(times[0] - 1, times[0], color="C0", alpha=0.5)
    tax.set_xticks([times[0], times[-1]])
    tax.set_xticklabels([dates[0], dates[-1]], fontsize=8)
    if attribution:
        fig.text(0.995, 0.005, attribution, ha="right", va="bottom", fontsize=7, color="0.3")
    frames = []
    quiver_artists = []
    for i in range(len(dates)):
        im.set_data(np.ma.masked_invalid(mag[i]))
        stamp.set_text(dates[i])
        fill.set_x(times[0] - 1)
        fill.set_width(times[i] - times[0] + 1)
        for a in quiver_artists:
            a.remove()
        n_before = len(ax.collections)
        if i > 0:
            _arrows(ax, ew[i], ns[i], geo, reference=vmax)
        quiver_artists = ax.collections[n_before:]
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return save_frames(frames, Path(path), fmt=fmt)


def animate_overlay(ts: xr.Dataset, path: str | Path) -> tuple[Path, tuple, float]:
    """Frames of the cumulative magnitude warped to EPSG:4326, no decoration (APNG).

    Returns the path, the lon/lat bbox (west, south, east, north) and the colour
    scale maximum.
    """
    from .overlay import colorize, warp_rgba, write_world_file

    geo = georef(ts)
    mag, vmax = _magnitudes(ts)
    frames, bbox, transform = [], None, None
    for i in range(mag.shape[0]):
        rgba, transform, bbox = warp_rgba(colorize(mag[i], SEQUENTIAL, 0, vmax, 0.85), geo)
        frames.append(rgba)
    path = save_frames(frames, Path(path), fmt="apng")
    write_world_file(path, transform)
    return path, bbox, vmax


def save_frames(frames: list[np.ndarray], path: Path, *, fmt: Format = "apng") -> Path:
    """Write frames (H, W, 3 or 4 uint8) as an animation looping forever."""
    from PIL import Image

    if not frames:
        raise OutputError(f"{path}: no frame to animate")
    durations = [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]
    if fmt == "mp4":
        return _save_mp4(frames, path)
    mode = "RGBA" if frames[0].shape[-1] == 4 else "RGB"
    images = [Image.fromarray(f, mode) for f in frames]
    with atomic_path(path) as tmp:
        if fmt == "apng":
            images[0].save(
                tmp,
                format="PNG",
                save_all=True,
                append_images=images[1:],
                duration=durations,
                loop=0,
                disposal=0,
                blend=0,
            )
        elif fmt == "gif":
            pal = [
                im.convert("RGB").quantize(colors=255, method=Image.Quantize.MEDIANCUT)
                for im in images
            ]
            pal[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=pal[1:],
                duration=durations,
                loop=0,
            )
        else:
            raise OutputError(f"unknown animation format {fmt!r}: use apng, gif or mp4")
    return path


def _save_mp4(frames: list[np.ndarray], path: Path) -> Path:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise OutputError("MP4 animation needs ffmpeg on the PATH; use apng (default) or gif")
    h, w = frames[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2  # yuv420p wants even sizes
    with atomic_path(path) as tmp:
        cmd = [
            ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{w2}x{h2}", "-r", str(1000 / FRAME_MS), "-i", "-",
            "-pix_fmt", "yuv420p", "-vcodec", "libx264", "-f", "mp4", str(tmp),
        ]  # fmt: skip
        data = b"".join(np.ascontiguousarray(f[:h2, :w2, :3]).tobytes() for f in frames)
        proc = subprocess.run(cmd, input=data, capture_output=True)
        if proc.returncode:
            raise OutputError(
                f"{path}: ffmpeg failed: {proc.stderr.decode(errors='replace')[-300:]}"
            )
    return path
