"""The ASGI application of ``tio serve``: OGC API – Processes, the portal's API and pages.

OGC API – Processes, Part 1 (core)::

    GET    /                          landing page (links)
    GET    /conformance               conformance classes
    GET    /processes                 the process list (one process: tio)
    GET    /processes/tio             its description (inputs, outputs)
    POST   /processes/tio/execution   submit a job (asynchronous: 201, Location: /jobs/{id})
    GET    /jobs                      the job list
    GET    /jobs/{id}                 a job's status and progress
    GET    /jobs/{id}/results         links to its products
    DELETE /jobs/{id}                 cancel (dismiss) it
    GET    /openapi.json              the OpenAPI document

For the portal (``/portal/``): ``/jobs/{id}/files/{path}`` (a product),
``/jobs/{id}/download.zip`` (everything), ``/jobs/{id}/timeseries?lon=&lat=``
(the time series at a point), ``/jobs/{id}/log``, ``/api/portal`` (data folders,
limits, parameters with their defaults) and ``/api/sources/{name}/preview.png``.
"""

from __future__ import annotations

import hmac
import importlib.util
import json
import logging
import math
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from tio import __version__

from .files import Refused, list_files, media_type, safe_file, zip_folder
from .jobs import FINISHED, JOB_ID, Job, JobManager
from .schema import Limits, RequestError, build_tree, parameter_table, parse_request

log = logging.getLogger("tio.web")

STATIC = Path(__file__).parent / "static"
PROCESS_ID = "tio"
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/ogc-process-description",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/job-list",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/dismiss",
]
EXC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"


@dataclass
class Settings:
    """How the server runs (from ``tio serve``'s options)."""

    jobs_dir: Path
    data_dirs: dict[str, Path] = field(default_factory=dict)
    max_jobs: int = 2
    scheduler: str | None = None
    token: str | None = None  # when set, submission and cancellation need it
    limits: Limits = field(default_factory=Limits)


class ApiError(Exception):
    def __init__(self, status: int, title: str, detail: str, kind: str | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail, self.kind = status, title, detail, kind


def _problem(status: int, title: str, detail: str, kind: str | None = None) -> JSONResponse:
    """An OGC / RFC 7807 exception document."""
    body = {"type": kind or f"about:blank#{status}", "title": title, "status": status}
    body["detail"] = detail
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(settings: Settings, *, manager: JobManager | None = None) -> FastAPI:
    """The application; the job manager starts and stops with it."""
    jobs = manager or JobManager(
        settings.jobs_dir, max_jobs=settings.max_jobs, scheduler=settings.scheduler
    )
    previews = _Previews(settings.jobs_dir / ".previews", settings.data_dirs)

    @asynccontextmanager
    async def lifespan(app):
        jobs.start()
        try:
            yield
        finally:
            jobs.close()

    app = FastAPI(
        title="TIO: ground displacement time series",
        version=__version__,
        description="OGC API – Processes service and web portal of TIO.",
        docs_url=None,  # the Swagger page loads scripts from a CDN: the portal works offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.jobs = jobs
    app.state.settings = settings

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        path = request.url.path
        if path.startswith("/jobs/") and "/files/" in path:
            # products are data: nothing in a job folder may run a script
            response.headers["Content-Security-Policy"] = (
                "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                "frame-ancestors 'self'"
            )
        elif path.startswith("/portal"):
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data: blob: https://tile.openstreetmap.org; connect-src 'self'; "
                "frame-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
            )
        return response

    # -- errors as OGC exception documents ----------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _problem(exc.status, exc.title, exc.detail, exc.kind)

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        title = "invalid parameter" if exc.status == 422 else "not available"
        return _problem(exc.status, title, str(exc), EXC + "invalid-parameter")

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"] if p not in ("query", "path", "body"))
        return _problem(422, "invalid parameter", f"{loc}: {e['msg']}", EXC + "invalid-parameter")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return _problem(exc.status_code, "error", str(exc.detail))

    # -- helpers ------------------------------------------------------------
    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def require_token(request: Request) -> None:
        if not settings.token:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), settings.token.encode()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "this server needs a bearer token to submit or cancel jobs "
                "(header Authorization: Bearer TOKEN)",
            )

    def get_job(job_id: str) -> Job:
        job = jobs.store.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise ApiError(404, "no such job", f"no job {job_id[:40]!r}", EXC + "no-such-job")
        return job

    def status_info(request: Request, job: Job) -> dict:
        b = base(request)
        info = {
            "processID": PROCESS_ID,
            "type": "process",
            "jobID": job.id,
            "status": job.status,
            "message": job.message,
            "created": job.created,
            "updated": job.updated,
            "progress": int(job.progress),
            "title": job.title,
            "links": [
                {"href": f"{b}/jobs/{job.id}", "rel": "self", "type": "application/json",
                 "title": "status"},
                {"href": f"{b}/portal/job.html?id={job.id}", "rel": "alternate",
                 "type": "text/html", "title": "job page"},
            ],
        }  # fmt: skip
        if job.started:
            info["started"] = job.started
        if job.finished:
            info["finished"] = job.finished
        if job.status == "successful":
            info["links"].append(
                {
                    "href": f"{b}/jobs/{job.id}/results",
                    "rel": "http://www.opengis.net/def/rel/ogc/1.0/results",
                    "type": "application/json",
                    "title": "results",
                }
            )
        return info

    # -- OGC API – Processes ------------------------------------------------
    @app.get("/", summary="Landing page")
    def landing(request: Request):
        accept = request.headers.get("accept", "")
        if request.query_params.get("f") == "html" or (
            "text/html" in accept and "application/json" not in accept
        ):
            return RedirectResponse("/portal/", status_code=303)
        b = base(request)
        return {
            "title": "TIO",
            "description": "Ground displacement time series from optical satellite images "
            "(OGC API – Processes).",
            "links": [
                {"href": f"{b}/", "rel": "self", "type": "application/json", "title": "this"},
                {"href": f"{b}/openapi.json", "rel": "service-desc",
                 "type": "application/vnd.oai.openapi+json;version=3.0", "title": "OpenAPI"},
                {"href": f"{b}/portal/", "rel": "service-doc", "type": "text/html",
                 "title": "web portal"},
                {"href": f"{b}/conformance",
                 "rel": "http://www.opengis.net/def/rel/ogc/1.0/conformance",
                 "type": "application/json", "title": "conformance"},
                {"href": f"{b}/processes",
                 "rel": "http://www.opengis.net/def/rel/ogc/1.0/processes",
                 "type": "application/json", "title": "processes"},
                {"href": f"{b}/jobs", "rel": "http://www.opengis.net/def/rel/ogc/1.0/job-list",
                 "type": "application/json", "title": "jobs"},
            ],
        }  # fmt: skip

    @app.get("/conformance", summary="Conformance classes")
    def conformance():
        return {"conformsTo": CONFORMANCE}

    def process_summary(request: Request) -> dict:
        b = base(request)
        return {
            "id": PROCESS_ID,
            "title": "TIO displacement time series",
            "description": "Correlates a network of image pairs over an area and date range "
            "and inverts it into cumulative east-west and north-south displacement.",
            "version": __version__,
            "jobControlOptions": ["async-execute", "dismiss"],
            "outputTransmission": ["reference"],
            "links": [
                {"href": f"{b}/processes/{PROCESS_ID}", "rel": "self",
                 "type": "application/json", "title": "process description"},
                {"href": f"{b}/processes/{PROCESS_ID}/execution",
                 "rel": "http://www.opengis.net/def/rel/ogc/1.0/execute",
                 "type": "application/json", "title": "execute"},
            ],
        }  # fmt: skip

    @app.get("/processes", summary="Processes")
    def processes(request: Request):
        return {
            "processes": [process_summary(request)],
            "links": [
                {"href": f"{base(request)}/processes", "rel": "self", "type": "application/json"}
            ],
        }

    @app.get("/processes/{process_id}", summary="Process description")
    def process(process_id: str, request: Request):
        if process_id != PROCESS_ID:
            raise ApiError(404, "no such process", f"no process {process_id[:40]!r}",
                           EXC + "no-such-process")  # fmt: skip
        return {**process_summary(request), **_process_io(settings)}

    @app.post("/processes/{process_id}/execution", status_code=201, summary="Submit a job")
    async def execute(process_id: str, request: Request):
        if process_id != PROCESS_ID:
            raise ApiError(404, "no such process", f"no process {process_id[:40]!r}",
                           EXC + "no-such-process")  # fmt: skip
        require_token(request)
        body = await _read_body(request, settings.limits.max_request_bytes)
        try:
            doc = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise RequestError("body", "not valid JSON") from None
        if not isinstance(doc, dict):
            raise RequestError("body", 'must be a JSON object with "inputs"')
        req = parse_request(doc)
        if len(jobs.store.list("accepted")) >= settings.limits.max_queued:
            raise ApiError(503, "busy", "too many jobs are waiting; try again later")
        from starlette.concurrency import run_in_threadpool

        config_toml, title = await run_in_threadpool(_check, req, settings, previews)
        job = jobs.submit(config_toml, doc, title)
        location = f"{base(request)}/jobs/{job.id}"
        return JSONResponse(status_info(request, job), status_code=201,
                            headers={"Location": location})  # fmt: skip

    @app.get("/jobs", summary="Jobs")
    def job_list(request: Request, limit: int = Query(100, ge=1, le=1000)):
        return {
            "jobs": [status_info(request, j) for j in jobs.store.list(limit=limit)],
            "links": [{"href": f"{base(request)}/jobs", "rel": "self", "type": "application/json"}],
        }

    @app.get("/jobs/{job_id}", summary="Status of a job")
    def job_status(job_id: str, request: Request):
        return status_info(request, get_job(job_id))

    @app.delete("/jobs/{job_id}", summary="Cancel (dismiss) a job")
    def dismiss(job_id: str, request: Request):
        require_token(request)
        get_job(job_id)
        job = jobs.cancel(job_id)
        assert job is not None
        return status_info(request, job)

    @app.get("/jobs/{job_id}/results", summary="Results of a job")
    def results(job_id: str, request: Request):
        job = get_job(job_id)
        if job.status != "successful":
            detail = (
                f"the job failed: {job.message}"
                if job.status == "failed"
                else f"the job is {job.status}"
            )
            raise ApiError(404, "result not ready", detail, EXC + "result-not-ready")
        b = f"{base(request)}/jobs/{job.id}"
        folder = jobs.job_dir(job.id)
        out = {
            rel: {"href": f"{b}/files/{rel}", "type": media_type(rel)} for rel in list_files(folder)
        }
        out["archive"] = {"href": f"{b}/download.zip", "type": "application/zip"}
        return out

    # -- files of a job ------------------------------------------------------
    @app.get("/jobs/{job_id}/files/{path:path}", summary="One file of a job")
    def job_file(job_id: str, path: str):
        job = get_job(job_id)
        if job.status == "dismissed":
            raise ApiError(404, "no such file", "the job was dismissed")
        try:
            real = safe_file(jobs.job_dir(job.id), path)
        except Refused as exc:
            raise ApiError(404, "no such file", f"{path[:100]!r}: {exc}") from None
        return FileResponse(real, media_type=media_type(real.name))

    @app.get("/jobs/{job_id}/files", summary="The files of a job")
    def job_files(job_id: str, request: Request):
        job = get_job(job_id)
        b = f"{base(request)}/jobs/{job.id}/files"
        if job.status == "dismissed":
            return {"files": []}
        folder = jobs.job_dir(job.id)
        return {
            "files": [
                {"path": rel, "href": f"{b}/{rel}", "size": (folder / rel).stat().st_size}
                for rel in list_files(folder)
            ]
        }

    @app.get("/jobs/{job_id}/download.zip", summary="Every file of a job as one zip")
    def job_zip(job_id: str):
        job = get_job(job_id)
        if job.status not in ("successful", "failed"):
            raise ApiError(404, "result not ready", f"the job is {job.status}",
                           EXC + "result-not-ready")  # fmt: skip
        archive = zip_folder(jobs.job_dir(job.id), f"tio-{job.id[:8]}")
        return FileResponse(
            archive,
            media_type="application/zip",
            filename=f"tio-{job.id[:8]}.zip",
            background=BackgroundTask(archive.unlink, missing_ok=True),
        )

    @app.get("/jobs/{job_id}/log", summary="The run log of a job")
    def job_log(job_id: str, tail: int = Query(200, ge=1, le=5000)):
        job = get_job(job_id)
        path = jobs.job_dir(job.id) / "tio.log"
        text = path.read_text(errors="replace") if path.is_file() else ""
        lines = [ln for ln in text.splitlines() if " DEBUG " not in ln]
        return Response("\n".join(lines[-tail:]) + "\n", media_type="text/plain")

    @app.get("/jobs/{job_id}/timeseries", summary="Time series at a lon/lat point")
    def timeseries(
        job_id: str,
        lon: float = Query(..., ge=-180, le=180),
        lat: float = Query(..., ge=-90, le=90),
    ):
        job = get_job(job_id)
        if job.status != "successful":
            raise ApiError(404, "result not ready", f"the job is {job.status}",
                           EXC + "result-not-ready")  # fmt: skip
        return _series_at(jobs.job_dir(job.id), lon, lat)

    # -- portal --------------------------------------------------------------
    @app.get("/api/portal", summary="What the submission form needs")
    def portal_info():
        return {
            "version": __version__,
            "token_required": bool(settings.token),
            "sources": [previews.info(name) for name in settings.data_dirs],
            "catalog_available": _catalog_module() is not None,
            "limits": {
                "max_area_km2": settings.limits.max_area_km2,
                "max_dates": settings.limits.max_dates,
                "max_request_bytes": settings.limits.max_request_bytes,
            },
            "parameters": parameter_table(),
        }

    @app.get("/api/sources/{name}/preview.png", summary="Quicklook of a data folder")
    def source_preview(name: str):
        if name not in settings.data_dirs:
            raise ApiError(404, "no such data folder", f"no data folder {name[:40]!r}")
        png = previews.png(name)
        if png is None:
            raise ApiError(404, "no preview", f"data folder {name!r} has no georeferenced image")
        return FileResponse(png, media_type="image/png")

    app.mount("/portal", StaticFiles(directory=STATIC, html=True), name="portal")
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, "request too large",
                               f"the request body is above {limit} bytes")  # fmt: skip
        except ValueError:
            raise ApiError(400, "bad request", "invalid Content-Length") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "request too large", f"the request body is above {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _catalog_module():
    """The STAC catalogue search module, when this installation has one."""
    for name in ("tio.catalog", "tio.search"):
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except ModuleNotFoundError:
            continue
    return None


def _check(req, settings: Settings, previews: _Previews) -> tuple[str, str]:
    """Check a request against the server (data folder, dates, limits); its TOML config."""
    from tio.config import dump_toml, validate
    from tio.errors import ConfigError, TioError
    from tio.ingest import check_date_limit, find_scenes

    inputs = req.inputs
    src = inputs.source
    if src.catalog is not None:
        return _check_catalog(req, settings)
    if src.folder not in settings.data_dirs:
        known = ", ".join(settings.data_dirs) or "none is configured"
        raise RequestError(
            "inputs.source.folder", f"{src.folder!r} is not a data folder of this server ({known})"
        )
    folder = settings.data_dirs[src.folder]
    tree = build_tree(inputs, [str(folder)], settings.limits)
    try:
        config = validate(tree)
    except ConfigError as exc:
        msg = str(exc)
        field_name = "inputs.parameters"
        for key, name in (
            ("input.aoi", "inputs.bbox"),
            ("input.start", "inputs.start"),
            ("input.end", "inputs.end"),
            ("input.max_cloud", "inputs.max_cloud"),
        ):
            if key in msg:
                field_name = name
        raise RequestError(field_name, msg) from None
    bounds = previews.bounds(src.folder)
    if inputs.bbox and bounds:
        w, s, e, n = inputs.bbox
        fw, fs, fe, fn = bounds
        if w >= fe or e <= fw or s >= fn or n <= fs:
            raise RequestError(
                "inputs.bbox",
                f"does not overlap the images of {src.folder!r} "
                f"(they cover {fw:.4f},{fs:.4f},{fe:.4f},{fn:.4f})",
            )
    try:
        scenes = find_scenes(
            [folder], band=config.input.band, start=config.input.start, end=config.input.end
        )
    except TioError as exc:
        raise RequestError("inputs.start" if inputs.start else "inputs.source", str(exc)) from None
    try:
        check_date_limit(
            scenes,
            settings.limits.max_dates,
            where=src.folder,
            advice="this server's limit; narrow inputs.start / inputs.end",
        )
    except TioError as exc:
        raise RequestError("inputs.start", str(exc)) from None
    title = inputs.title.strip() or (
        f"{src.folder} {scenes[0].date.isoformat()} to {scenes[-1].date.isoformat()}"
    )
    return dump_toml(config), title


def _check_catalog(req, settings: Settings) -> tuple[str, str]:
    """A catalogue request: a named catalogue only (the server never fetches a URL a user
    typed), an area and both dates; the search itself runs in the job."""
    from tio.catalog import CATALOGS, COLLECTIONS
    from tio.config import dump_toml, validate
    from tio.errors import ConfigError

    inputs = req.inputs
    src = inputs.source
    if src.catalog not in CATALOGS:
        raise RequestError(
            "inputs.source.catalog",
            f"{src.catalog!r} is not a catalogue of this server; use one of {', '.join(CATALOGS)}",
        )
    if src.collection not in COLLECTIONS:
        raise RequestError(
            "inputs.source.collection",
            f"{src.collection!r} is not supported; use one of {', '.join(COLLECTIONS)}",
        )
    for name, value in (("bbox", inputs.bbox), ("start", inputs.start), ("end", inputs.end)):
        if value is None:
            raise RequestError(f"inputs.{name}", "a catalogue search needs an area and both dates")
    tree = build_tree(inputs, [], settings.limits)
    tree["input"].update(catalog=src.catalog, collection=src.collection)
    try:
        config = validate(tree)
    except ConfigError as exc:
        raise RequestError("inputs.parameters", str(exc)) from None
    title = inputs.title.strip() or (
        f"{src.catalog} {inputs.start.isoformat()} to {inputs.end.isoformat()}"
    )
    return dump_toml(config), title


def _series_at(folder: Path, lon: float, lat: float) -> dict:
    import numpy as np
    import xarray as xr

    from tio.errors import InputError
    from tio.points import Point, locate
    from tio.products import magnitude
    from tio.quicklook import iso_dates

    nc = folder / "timeseries.nc"
    if not nc.is_file():
        raise ApiError(404, "no time series", "this job has no timeseries.nc")
    with xr.open_dataset(nc, engine="h5netcdf") as ds:
        ts = ds.load()
    try:
        where = locate(ts, [Point("clicked", lon, lat)])[0]
    except InputError as exc:
        raise ApiError(404, "outside the grid", str(exc)) from None
    r, c = where.row, where.col

    def values(a):
        return [None if not math.isfinite(float(v)) else round(float(v), 4) for v in a]

    ew = ts["cumulative_ew"].values[:, r, c]
    ns = ts["cumulative_ns"].values[:, r, c]
    sew = ts["sigma_ew"].values[:, r, c]
    sns = ts["sigma_ns"].values[:, r, c]
    mag, smag = magnitude(ew, ns, sew, sns)
    return {
        "lon": where.lon,
        "lat": where.lat,
        "row": r,
        "col": c,
        "units": str(ts.attrs.get("units", "m")),
        "dates": iso_dates(ts),
        "ew": values(ew),
        "ns": values(ns),
        "magnitude": values(np.asarray(mag)),
        "sigma_ew": values(sew),
        "sigma_ns": values(sns),
        "sigma_magnitude": values(np.asarray(smag)),
    }


def _process_io(settings: Settings) -> dict:
    """Inputs and outputs of the process description, from the request schema."""
    from .schema import JobInputs

    schema = JobInputs.model_json_schema()
    props = schema["properties"]
    defs = schema.get("$defs", {})
    inputs = {}
    for name, prop in props.items():
        if "$ref" in prop:
            prop = defs[prop["$ref"].split("/")[-1]]
        if name == "source" and settings.data_dirs:
            prop = json.loads(json.dumps(prop))
            prop["properties"]["folder"]["enum"] = list(settings.data_dirs)
        desc = prop.get("description", "")
        inputs[name] = {
            "title": name,
            "description": desc,
            "minOccurs": 1 if name in schema.get("required", []) else 0,
            "maxOccurs": 1,
            "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
        }
    inputs["bbox"]["schema"] = {
        "type": "array",
        "items": {"type": "number"},
        "minItems": 4,
        "maxItems": 4,
        "description": "west, south, east, north (degrees)",
    }
    return {
        "inputs": inputs,
        "outputs": {
            "products": {
                "title": "products",
                "description": "Links to every product of the run (GeoTIFFs, timeseries.nc, "
                "quicklooks, animation, overlays, report.html, catalog.json) and a zip.",
                "schema": {"type": "object"},
            }
        },
    }


class _Previews:
    """A lon/lat quicklook of each data folder's first image (background of the form map)."""

    def __init__(self, folder: Path, data_dirs: dict[str, Path]):
        self.folder = folder
        self.data_dirs = data_dirs
        self._lock = threading.Lock()
        self._index: dict[str, dict | None] = {}

    def _make(self, name: str) -> dict | None:
        if name in self._index:
            return self._index[name]
        info = None
        try:
            info = self._render(name)
        except Exception as exc:  # noqa: BLE001 - a preview is optional
            log.warning("no preview for data folder %s: %s", name, exc)
        self._index[name] = info
        return info

    def _render(self, name: str) -> dict | None:
        import numpy as np
        import rasterio
        from affine import Affine

        from tio._mapdecor import Georef
        from tio.ingest import find_scenes
        from tio.overlay import write_overlay

        scenes = find_scenes([self.data_dirs[name]])
        with rasterio.open(scenes[0].path) as src:
            if src.crs is None:
                return {"dates": len(scenes), "first": scenes[0].date.isoformat()}
            scale = max(1, math.ceil(max(src.width, src.height) / 600))
            h, w = math.ceil(src.height / scale), math.ceil(src.width / scale)
            data = src.read(1, out_shape=(h, w), masked=True).astype("float32").filled(np.nan)
            t = src.transform * Affine.scale(src.width / w, src.height / h)
            geo = Georef(src.crs.to_wkt(), t, (h, w))
        finite = data[np.isfinite(data)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
        self.folder.mkdir(parents=True, exist_ok=True)
        ov = write_overlay(self.folder, name, data, geo, cmap="gray", vmin=float(lo),
                           vmax=float(hi), units="", label=f"{name} {scenes[0].date}")  # fmt: skip
        return {
            "dates": len(scenes),
            "first": scenes[0].date.isoformat(),
            "last": scenes[-1].date.isoformat(),
            "bbox": list(ov.bbox),
            "bounds": ov.as_json()["bounds"],
            "png": str(self.folder / ov.file),
        }

    def info(self, name: str) -> dict:
        with self._lock:
            info = self._make(name)
        out = {"name": name}
        if info:
            out.update({k: v for k, v in info.items() if k != "png"})
            if "png" in info:
                out["preview"] = f"/api/sources/{name}/preview.png"
        return out

    def png(self, name: str) -> Path | None:
        with self._lock:
            info = self._make(name)
        return Path(info["png"]) if info and "png" in info else None

    def bounds(self, name: str) -> list[float] | None:
        with self._lock:
            info = self._make(name)
        return info.get("bbox") if info else None


__all__ = ["FINISHED", "Settings", "create_app"]
