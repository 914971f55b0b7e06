"""The job request: what a user may set, how it is checked, how it becomes a RunConfig.

A request (the ``inputs`` of ``POST /processes/tio/execution``)::

    {"source": {"folder": "demo"},                  # a name of the allow-list
     "bbox": [6.80, 45.90, 6.90, 45.95],            # west, south, east, north (optional)
     "start": "2021-01-01", "end": "2022-12-31",    # optional
     "max_cloud": 0.5,
     "title": "my landslide",
     "parameters": {"correlation": {"window": 64}}} # any other RunConfig value

``source`` may instead be ``{"catalog": NAME, "collection": NAME}``: one of
the STAC catalogues of :data:`tio.catalog.CATALOGS` (never a URL a user typed),
searched by the job itself. Every error names the field, e.g.
``inputs.bbox: west must be below east``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# parameters the request sets itself (or the server does): not in "parameters"
RESERVED = {
    "input.paths": "the data source (inputs.source)",
    "input.aoi": "inputs.bbox",
    "input.start": "inputs.start",
    "input.end": "inputs.end",
    "input.max_cloud": "inputs.max_cloud",
    "input.max_dates": "the server (its limit on dates)",
    "output.directory": "the server (the job folder)",
    "output.points": "the server",
    "compute.scheduler": "the server (each job runs in one of its Dask workers)",
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_area_km2: float = 2500.0
    max_dates: int = 100
    max_request_bytes: int = 64 * 1024
    max_queued: int = 50


class Source(BaseModel):
    """Where the images come from: a folder of the server's allow-list, or a catalogue."""

    model_config = ConfigDict(extra="forbid")

    folder: str | None = Field(None, description="Name of a data folder of the allow-list.")
    catalog: str | None = Field(None, description="URL of a STAC catalogue (API).")
    collection: str | None = Field(None, description="Collection of the STAC catalogue.")

    @model_validator(mode="after")
    def _one(self):
        if (self.folder is None) == (self.catalog is None):
            raise ValueError("give either folder (a server data folder) or catalog")
        if self.catalog is not None and not self.collection:
            raise ValueError("a catalogue source needs a collection")
        return self


class JobInputs(BaseModel):
    """The inputs of the ``tio`` process."""

    model_config = ConfigDict(extra="forbid")

    source: Source
    bbox: list[float] | None = Field(
        None,
        description="Area of interest: [west, south, east, north] in degrees (WGS84). "
        "Unset: the whole extent of the first image.",
    )
    start: dt.date | None = Field(None, description="First acquisition date kept.")
    end: dt.date | None = Field(None, description="Last acquisition date kept.")
    max_cloud: float = Field(
        0.5, ge=0, le=1, description="Dates with a larger cloudy share of the area are dropped."
    )
    title: str = Field("", max_length=200, description="A name for the job.")
    parameters: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Other parameters by section, e.g. {"correlation": {"window": 64}} '
        "(see `tio config`).",
    )

    @field_validator("bbox", mode="before")
    @classmethod
    def _ogc_bbox(cls, v):
        if isinstance(v, dict):  # OGC bounding box input: {"bbox": [...], "crs": ...}
            crs = str(v.get("crs", "CRS84"))
            if not crs.endswith(("CRS84", "4326")):
                raise ValueError("only lon/lat bounding boxes (CRS84) are accepted")
            return v.get("bbox")
        return v

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, v):
        if v is None:
            return v
        if len(v) != 4:
            raise ValueError("must be 4 numbers: west, south, east, north")
        w, s, e, n = v
        if not all(math.isfinite(x) for x in v):
            raise ValueError("must be finite numbers")
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
            raise ValueError("longitudes must be in -180..180 and latitudes in -90..90")
        if w >= e:
            raise ValueError("west must be below east")
        if s >= n:
            raise ValueError("south must be below north")
        return v

    @model_validator(mode="after")
    def _check_dates(self):
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class ExecuteRequest(BaseModel):
    """Body of ``POST /processes/tio/execution`` (OGC API – Processes)."""

    model_config = ConfigDict(extra="forbid")

    inputs: JobInputs
    outputs: dict[str, Any] | None = None
    response: str | None = Field(None, pattern="^(document|raw)$")
    subscriber: dict[str, Any] | None = None


class RequestError(Exception):
    """A request is invalid: ``field`` names the input, ``status`` the HTTP status."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.status = status


def area_km2(bbox: list[float]) -> float:
    """Area of a lon/lat box (spherical approximation)."""
    w, s, e, n = bbox
    r = 6371.0088
    return (
        (math.radians(e) - math.radians(w))
        * abs(math.sin(math.radians(n)) - math.sin(math.radians(s)))
        * r
        * r
    )


def parse_request(body: dict) -> ExecuteRequest:
    """Validate the body; a :class:`RequestError` names the first wrong field."""
    try:
        return ExecuteRequest.model_validate(body)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        if e["type"] == "missing":
            msg = "required"
        value = e.get("input")
        shown = f" (got {value!r})" if e["type"] not in ("missing", "extra_forbidden") else ""
        raise RequestError(loc or "body", f"{msg}{shown}"[:300]) from None


@dataclass
class Checked:
    """A request checked against the server: the run configuration tree and a title."""

    tree: dict
    title: str
    n_dates: int
    warnings: list[str] = field(default_factory=list)


def build_tree(inputs: JobInputs, paths: list[str], limits: Limits) -> dict:
    """The RunConfig tree of a request, before validation by :func:`tio.config.validate`."""
    if inputs.bbox is not None and area_km2(inputs.bbox) > limits.max_area_km2:
        raise RequestError(
            "inputs.bbox",
            f"area {area_km2(inputs.bbox):.0f} km2 is above the limit of "
            f"{limits.max_area_km2:g} km2",
        )
    from tio.config import RunConfig

    tree: dict[str, dict[str, Any]] = {}
    for section, values in inputs.parameters.items():
        if section not in RunConfig.model_fields:
            raise RequestError(
                f"inputs.parameters.{section}",
                f"unknown section; known are {', '.join(RunConfig.model_fields)}",
            )
        if not isinstance(values, dict):
            raise RequestError(f"inputs.parameters.{section}", "must be an object")
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted in RESERVED:
                raise RequestError(
                    f"inputs.parameters.{dotted}", f"cannot be set here: set by {RESERVED[dotted]}"
                )
            tree.setdefault(section, {})[key] = value
    # the server already spreads jobs over its Dask workers: a job computes in its own
    # process rather than starting a cluster of its own inside a worker
    tree.setdefault("compute", {})["scheduler"] = "synchronous"
    tree.setdefault("input", {}).update(
        paths=paths,
        aoi=inputs.bbox,
        start=inputs.start.isoformat() if inputs.start else None,
        end=inputs.end.isoformat() if inputs.end else None,
        max_cloud=inputs.max_cloud,
        # checked before the search's images are read (a catalogue's dates are known
        # only once the job searches it)
        max_dates=limits.max_dates,
    )
    return tree


def parameter_table() -> list[dict]:
    """Every RunConfig parameter a request may set, with its default, for the form."""
    import typing

    from tio.config import RunConfig, _allowed

    defaults = RunConfig()
    out = []
    for section in RunConfig.model_fields:
        sub = getattr(defaults, section)
        fields = []
        for name, f in type(sub).model_fields.items():
            if f"{section}.{name}" in RESERVED:
                continue
            value = getattr(sub, name)
            ann = f.annotation
            args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
            kind, options = "text", None
            for a in args:
                if typing.get_origin(a) is typing.Literal:
                    kind, options = "enum", list(typing.get_args(a))
                    break
                if a is bool:
                    kind = "bool"
                    break
                if a is int:
                    kind = "int"
                    break
                if a is float:
                    kind = "float"
                    break
            if isinstance(value, tuple | list) or kind == "text" and value is not None:
                value = str(value) if not isinstance(value, tuple | list) else list(value)
            fields.append(
                {
                    "name": name,
                    "kind": kind,
                    "options": options,
                    "default": value,
                    "description": f.description,
                    "allowed": _allowed(f),
                }
            )
        doc = (type(sub).__doc__ or "").strip().splitlines()[0]
        out.append({"section": section, "title": doc, "fields": fields})
    return out
