"""One configuration model for every stage of TIO.

The whole run is described by :class:`RunConfig`, a tree of pydantic models,
one section per stage::

    [input]        which scenes, which band, which area and dates
    [pairs]        how the pair network is chosen
    [correlation]  how each pair is correlated
    [correction]   what is removed from each pair before inversion
    [inversion]    the robust time-series inversion
    [output]       which products are written
    [compute]      where the work runs (Dask), how many workers, how much memory

Defaults follow the original ISTerre TIO service (each date paired with the next
4 dates, median offset removed, residual scale 2 m, gross outliers above 5 m,
smoothing gamma^2 = 0.003 used only to tie unconnected dates, 30 % of valid pairs
needed per pixel) unless noted. ``tio config`` prints them as a commented TOML
file; :func:`load_config` reads TOML or YAML and applies ``section.key=value``
overrides. Any invalid value raises :class:`tio.errors.ConfigError` with a single
line naming the parameter, the value and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, TioError

__all__ = [
    "ConfigError",
    "CorrectionConfig",
    "ComputeConfig",
    "CorrelationConfig",
    "InputConfig",
    "InversionConfig",
    "OutputConfig",
    "PairsConfig",
    "RunConfig",
    "dump_toml",
    "load_config",
    "parse_override",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def digest(self) -> str:
        """A short hash of this section's values (used to skip finished stages)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class InputConfig(_Section):
    """Which scenes to read, which band, where and when."""

    paths: list[Path] = Field(
        default_factory=list,
        description="Images (GeoTIFF, COG, JPEG 2000), Sentinel-2 SAFE folders, or folders "
        "holding them. Dates come from a TIO_DATE tag or from YYYYMMDD / YYYY-MM-DD in the "
        "file name.",
    )
    band: str = Field(
        "B04",
        description="Band read from Sentinel-2 SAFE products: B01 to B12 or B8A, at its "
        "native resolution (B02, B03, B04, B08 are 10 m), or with a resolution as in B04_60m.",
        pattern=r"^B(0[1-9]|1[0-2]|8A)(_(10|20|60)m)?$",
    )
    aoi: tuple[float, float, float, float] | str | None = Field(
        None,
        description="Area of interest: a lon/lat box [west, south, east, north] (degrees, "
        "WGS84), a GeoJSON file or a WKT geometry; only its bounding window is read. Unset: "
        "the whole extent of the first image.",
    )
    crs: str | None = Field(
        None,
        description="CRS of the output grid, e.g. EPSG:32632. Unset: the first image's CRS, "
        "or with an area of interest the UTM zone of its centre.",
    )
    resolution: float | None = Field(
        None,
        gt=0,
        description="Pixel size of the output grid in CRS units. Unset: the first image's.",
    )
    orbit: int | None = Field(
        None,
        ge=1,
        le=143,
        description="Keep only Sentinel-2 products of this relative orbit (unset: all local "
        "inputs; in a catalogue search, the orbit covering the area on the most dates).",
    )
    max_cloud: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A date whose share of cloudy or empty pixels over the area is above this "
        "is dropped (its other cloudy pixels are masked).",
    )
    mask_snow: bool = Field(
        False, description="Mask snow as well as clouds and shadows (Sentinel-2 masks)."
    )
    b09_threshold: float = Field(
        1200.0,
        gt=0,
        description="For products without a cloud mask: a date whose mean band B09 over the "
        "area is above this (digital numbers) is dropped, as the original TIO did.",
    )
    pixel_units: bool = Field(
        False,
        description="Accept images without georeferencing (e.g. a JPEG series); results in "
        "pixels, east = right, north = up.",
    )
    start: dt.date | None = Field(None, description="First acquisition date kept (ISO 8601).")
    end: dt.date | None = Field(None, description="Last acquisition date kept (ISO 8601).")
    max_dates: int | None = Field(
        None,
        ge=2,
        description="Stop before reading any image if the inputs or the catalogue search give "
        "more dates than this (unset: no limit; the web portal sets its own).",
    )
    resampling: Literal["cubic", "cubic_spline", "lanczos", "bilinear"] = Field(
        "cubic",
        description="Resampler used when an image is not on the output grid.",
    )
    catalog: str = Field(
        "earth-search",
        description="STAC catalogue searched when no paths are given (an area and dates are): "
        "earth-search, cdse, planetary-computer, or a STAC API URL.",
    )
    collection: str = Field(
        "sentinel-2-l2a",
        description="Catalogue collection searched: sentinel-2-l2a (cloud mask from SCL) or "
        "sentinel-2-l1c.",
    )
    catalog_max_cloud: float = Field(
        50.0,
        ge=0,
        le=100,
        description="Catalogue search: largest cloud cover of a whole product (percent, "
        "catalogue metadata) before the area is read.",
    )
    cache_dir: Path = Field(
        Path("~/.cache/tio"),
        description="Folder of downloaded products (Copernicus Data Space SAFE archives), one "
        "sub-folder per product id.",
    )
    cache_limit: float = Field(
        50.0,
        gt=0,
        description="Largest size of cache_dir in GB; least recently used products are "
        "removed first.",
    )

    @field_validator("aoi")
    @classmethod
    def _check_aoi(cls, v):
        if v is None:
            return v
        from .aoi import parse_aoi

        try:
            parse_aoi(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("crs")
    @classmethod
    def _check_crs(cls, v):
        if v is None:
            return v
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            crs = CRS.from_user_input(v)
        except CRSError:
            raise ValueError("not a CRS GDAL knows (give e.g. EPSG:32632)") from None
        if not crs.is_projected:
            raise ValueError("must be a projected CRS in metres (e.g. a UTM zone)")
        return v

    @model_validator(mode="after")
    def _check_dates(self):
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class PairsConfig(_Section):
    """How the redundant network of image pairs is chosen."""

    max_next: int = Field(
        4, ge=1, le=50, description="Each date is paired with this many following dates."
    )
    min_days: int = Field(0, ge=0, description="Shortest time between the two dates of a pair.")
    max_days: int | None = Field(
        None, ge=1, description="Longest time between the two dates of a pair (unset: no limit)."
    )
    seasonal_days: int | None = Field(
        None,
        ge=0,
        le=182,
        description="Also pair dates of different years (at least 300 days apart) within this "
        "many days of the same day of year, for snow and vegetation (unset: off; not limited "
        "by max_next or max_days).",
    )
    max_per_date: int | None = Field(
        None,
        ge=1,
        description="Largest number of pairs through one date; shortest baselines are kept "
        "first (unset: no cap).",
    )

    @model_validator(mode="after")
    def _check_days(self):
        if self.max_days is not None and self.max_days < self.min_days:
            raise ValueError(f"max_days {self.max_days} is below min_days {self.min_days}")
        return self


class CorrelationConfig(_Section):
    """Sub-pixel correlation of each pair."""

    window: int = Field(32, ge=8, le=512, description="Correlation window size (pixels).")
    step: int = Field(
        8, ge=1, le=512, description="Spacing of the output grid (pixels of the images)."
    )
    search: int = Field(
        8, ge=1, le=256, description="Largest displacement searched for, each direction (pixels)."
    )
    prefilter: Literal["none", "highpass", "wallis"] = Field(
        "none",
        description="Filter applied to both images before matching (wallis: local mean and "
        "contrast normalisation, for strong illumination change).",
    )
    levels: int = Field(
        0,
        ge=0,
        le=6,
        description="Coarse-to-fine levels for displacements larger than the search range "
        "(each level halves the resolution; 0: off).",
    )
    min_texture: float = Field(
        0.1,
        ge=0,
        description="Windows with less contrast than this share of the image's median window "
        "contrast give no value (flat areas).",
    )
    max_peak_ratio: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Windows with a second correlation peak above this share of the best one "
        "give no value (ambiguous, repetitive texture; 1: off).",
    )
    deform: int = Field(
        1,
        ge=0,
        le=4,
        description="Window-deformation passes: strained windows (the offset changes by more "
        "than 0.1 px within half a window) are measured again on the secondary deformed by "
        "the interpolated offset field (0: off).",
    )
    min_score: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Offsets whose correlation score is below this are discarded "
        "(unrelated textures reach about 0.3 by chance).",
    )
    max_masked_fraction: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="A window with a larger share of unusable pixels (cloud, nodata) "
        "gives no value.",
    )


class CorrectionConfig(_Section):
    """Corrections applied to each pair's displacement maps before inversion."""

    median: bool = Field(
        True,
        description="Subtract each map's median offset over stable ground (per component): "
        "the misregistration.",
    )
    ramp: bool = Field(
        False,
        description="Also remove a plane (long-wavelength ramp) fitted robustly on stable ground.",
    )
    stripes: bool = Field(
        False,
        description="Also remove Sentinel-2 detector stripes: one offset per detector on stable "
        "ground, footprints from the products' MSK_DETFOO masks, else from the ground-track "
        "geometry.",
    )
    stable_mask: Path | None = Field(
        None,
        description="Stable ground: a raster (non-zero = stable) or GeoJSON file (inside = "
        "stable). Unset: chosen automatically (high score, small and consistent across pairs).",
    )
    stable_mask_moving: bool = Field(
        False,
        description="The stable_mask file marks the moving area instead; the rest is stable.",
    )
    max_displacement: float | None = Field(
        None,
        gt=0,
        description="Offsets farther than this from the map's median (metres, or pixels with "
        "pixel_units) are discarded (unset: no limit).",
    )
    outlier_test: bool = Field(
        True,
        description="Discard vectors that disagree with their 3x3 neighbours (local "
        "vector-median filter: normalised median test, Westerweel & Scarano 2005).",
    )
    outlier_threshold: float = Field(
        2.0, gt=0, description="Threshold of the normalised median test (residual / spread)."
    )

    @field_validator("stable_mask")
    @classmethod
    def _check_mask(cls, v):
        if v is not None and not Path(v).is_file():
            raise ValueError("no such file")
        return v


class InversionConfig(_Section):
    """Robust weighted least-squares inversion of the pair network, pixel by pixel."""

    residual_scale: float = Field(
        2.0, gt=0, description="s in the re-weighting w = 1/(s^2 + r^2) (metres)."
    )
    gross_outlier: float = Field(
        5.0,
        gt=0,
        description="Pairs whose residual exceeds this (metres) in the last re-weighting pass "
        "get zero weight.",
    )
    reweight_iterations: int = Field(
        3, ge=0, le=20, description="Passes of iterative re-weighting after the first solution."
    )
    smoothing_gamma2: float = Field(
        0.003,
        ge=0,
        description="Weight of the temporal smoothing that ties otherwise unconnected dates "
        "(used only where the network is disconnected; 0 leaves such dates empty).",
    )
    regularisation: float = Field(
        0.1,
        ge=0,
        description="Weight of the temporal regularisation at every pixel and date (squared "
        "time-aware second difference of the displacement, zero for a constant velocity), "
        "relative to a pair of mean weight. The re-weighting passes judge each pair by its "
        "residual against all the other pairs plus this prior, so a gross error on the only "
        "pair of a date is found; 0 disables it.",
    )
    regularisation_mode: Literal["solve", "outliers"] = Field(
        "outliers",
        description="outliers: the regularisation serves only to find outliers, the final "
        "solution is not regularised (exact for any history the pairs determine); solve: the "
        "final solution is regularised too (smoother; rounds off steps).",
    )
    joint_outliers: bool = Field(
        True,
        description="Both components weight and reject each pair from the larger of its EW "
        "and NS residuals, so a pair rejected as a gross outlier in one is rejected in the other "
        "too: both come from one correlation peak, so a wrong match is wrong in both. false: each "
        "component on its own, as NSBAS.",
    )
    min_valid_fraction: float = Field(
        0.3, gt=0, le=1, description="A pixel is inverted only with this share of pairs valid."
    )
    pair_weighting: Literal["residual", "std", "none"] = Field(
        "residual",
        description="Initial pair weights 1/sigma^2: residual (sigma = each pair's noise "
        "measured on the residuals of a first inversion of a sample of pixels), std (sigma = "
        "each map's robust spread: assumes a mostly stable scene) or none.",
    )
    baseline_weighting: Literal["none", "short", "long"] = Field(
        "none",
        description="Pair weights from the temporal baseline, as GDM-OPT: none, short "
        "(weight median/days: favour short pairs) or long (days/median: favour long pairs).",
    )
    score_weighting: bool = Field(
        False, description="Multiply pair weights by the correlation score."
    )


class OutputConfig(_Section):
    """What is written to the output folder."""

    directory: Path = Field(Path("tio-output"), description="Output folder of the run.")
    quicklooks: bool = Field(
        True, description="Write quicklooks, the animation, map overlays and the HTML report."
    )
    netcdf: bool = Field(True, description="Write the NetCDF cube timeseries.nc.")
    points: Path | None = Field(
        None,
        description="CSV (lon,lat or x,y columns) or GeoJSON of points: their time series go to "
        "points.csv and points.png (the pixel of largest motion is always added).",
    )
    animation: Literal["apng", "gif", "mp4"] = Field(
        "apng",
        description="Format of the animation of the cumulative displacement (mp4 needs ffmpeg).",
    )

    @field_validator("points")
    @classmethod
    def _check_points(cls, v):
        if v is not None:
            from .points import read_points

            try:  # a missing or malformed file stops the run before any work
                read_points(v)
            except TioError as exc:
                raise ValueError(str(exc)) from None
        return v


class ComputeConfig(_Section):
    """Where and how the work runs (never changes the results)."""

    scheduler: str | None = Field(
        None,
        description="Address of a running dask.distributed scheduler (e.g. tcp://host:8786) "
        'whose workers see the output folder; "synchronous" runs every task in this process '
        "without Dask. Unset: a local Dask cluster sized to the machine.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=512,
        description="Worker processes of the local cluster (one thread each). Unset: one per "
        "CPU core. Ignored with a scheduler address.",
    )
    memory_limit: str | None = Field(
        None,
        description='Memory limit of each local worker, e.g. "4GB" (Dask spills, then '
        "pauses, then restarts a worker above it). Unset: the machine's memory shared "
        "between the workers. Ignored with a scheduler address.",
    )

    @field_validator("memory_limit")
    @classmethod
    def _check_memory(cls, v):
        if v is not None:
            from dask.utils import parse_bytes

            try:
                if parse_bytes(v) <= 0:
                    raise ValueError
            except (ValueError, TypeError):
                raise ValueError("must be a size such as 4GB or 500MiB") from None
        return v


class RunConfig(_Section):
    """Every parameter of a TIO run."""

    input: InputConfig = Field(default_factory=InputConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    correlation: CorrelationConfig = Field(default_factory=CorrelationConfig)
    correction: CorrectionConfig = Field(default_factory=CorrectionConfig)
    inversion: InversionConfig = Field(default_factory=InversionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @model_validator(mode="after")
    def _check_window(self):
        c = self.correlation
        if c.step > c.window:
            raise ValueError(
                f"correlation.step {c.step} is larger than correlation.window {c.window}: "
                "parts of the image would never be matched"
            )
        return self


# ---------------------------------------------------------------------------
# loading, overriding, validating


def _format_error(err: ValidationError) -> str:
    """One line: parameter, value, what is allowed."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if e["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in e["loc"][:-1])
        known = _known_keys(section)
        return f"unknown parameter {loc!s}: known are {', '.join(known)}"
    if not loc:
        return f"invalid configuration: {msg}"
    value = e.get("input")
    return f"invalid value for {loc}: {value!r}: {msg}"


def _known_keys(section: str) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in [p for p in section.split(".") if p]:
        ann = model.model_fields[part].annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        model = ann
    return list(model.model_fields)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {key!r} must be SECTION.NAME, e.g. correlation.window")
    section, name = parts
    if section not in RunConfig.model_fields:
        raise ConfigError(
            f"unknown configuration section {section!r} in {key!r}: "
            f"known are {', '.join(RunConfig.model_fields)}"
        )
    sub = tree.setdefault(section, {})
    if not isinstance(sub, dict):
        raise ConfigError(f"configuration section {section!r} must be a table")
    sub[name] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is read as TOML (bare words are strings)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like SECTION.NAME=VALUE")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _read_file(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        if Path(path).suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"configuration file {path} is not valid: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold sections of key = value")
    return data


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Build a :class:`RunConfig` from an optional TOML/YAML file and dotted overrides.

    Parameters
    ----------
    path
        A ``.toml``, ``.yaml`` or ``.yml`` file with the sections of ``tio config``.
    overrides
        ``{"section.key": value}``, applied after the file (command-line flags).

    Raises
    ------
    ConfigError
        On an unreadable file, an unknown parameter or an invalid value; the message
        is one line naming the parameter, the value and what is allowed.
    """
    tree: dict[str, Any] = _read_file(Path(path)) if path else {}
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    return validate(tree)


def validate(tree: dict[str, Any]) -> RunConfig:
    """Validate a nested mapping into a :class:`RunConfig` (one-line ConfigError)."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


# ---------------------------------------------------------------------------
# printing as a commented TOML file


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _allowed(field) -> str:
    parts = []
    for meta in field.metadata:
        for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, name, None) is not None:
                parts.append(f"{sym} {getattr(meta, name)}")
    ann = str(field.annotation)
    if "Literal" in ann:
        inner = ann[ann.index("Literal[") + 8 : ann.rindex("]")]
        parts.append("one of " + inner.replace("'", '"'))
    return ", ".join(parts)


def dump_toml(config: RunConfig | None = None) -> str:
    """The configuration as a commented TOML file (``tio config``)."""
    config = config or RunConfig()
    lines = [
        "# TIO configuration. Every value shown is the default; edit what you need and pass",
        "# the file with `tio run --config FILE`. Flags on the command line override it.",
        "",
    ]
    for section in RunConfig.model_fields:
        sub = getattr(config, section)
        doc = (type(sub).__doc__ or "").strip().splitlines()[0]
        lines.append(f"[{section}]  # {doc}")
        for name, field in type(sub).model_fields.items():
            value = getattr(sub, name)
            lines.append(f"# {field.description}")
            allowed = _allowed(field)
            if allowed:
                lines.append(f"# allowed: {allowed}")
            if value is None:
                lines.append(f"# {name} =  (unset)")
            else:
                dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
                if isinstance(dumped, Path):
                    dumped = str(dumped)
                if isinstance(dumped, list) and dumped and isinstance(dumped[0], Path):
                    dumped = [str(p) for p in dumped]
                if isinstance(dumped, dt.date):
                    dumped = dumped.isoformat()
                lines.append(f"{name} = {_toml_value(dumped)}")
        lines.append("")
    return "\n".join(lines)


def markdown_table() -> str:
    """Every parameter as a Markdown table (the README's parameter table is this)."""
    rows = ["| parameter | default | meaning |", "| --- | --- | --- |"]
    defaults = RunConfig()
    for section in RunConfig.model_fields:
        sub = getattr(defaults, section)
        for name, field in type(sub).model_fields.items():
            value = getattr(sub, name)
            if value is None:
                shown = "unset"
            elif isinstance(value, bool):
                shown = "true" if value else "false"
            elif isinstance(value, list):
                shown = "[]"
            else:
                shown = str(value)
            allowed = _allowed(field)
            meaning = field.description + (f" ({allowed})" if allowed else "")
            rows.append(f"| `{section}.{name}` | `{shown}` | {meaning.replace('|', '/')} |")
    return "\n".join(rows)
