"""``tio serve``: the web portal and OGC API – Processes service."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import click

EPILOG = """\b
Examples:
  tio serve --data-dir alps=/data/alps_s2
      portal on http://127.0.0.1:8000/portal/, jobs read images of /data/alps_s2
  tio serve --data-dir alps=/data/alps_s2 --max-jobs 4 --jobs-dir /srv/tio-jobs
  TIO_TOKEN=$(openssl rand -hex 24) tio serve --host 0.0.0.0 --data-dir alps=/data/alps_s2
      listen on every interface: submitting and cancelling need "Authorization: Bearer TOKEN"
  tio serve --scheduler tcp://dask-scheduler:8786 --data-dir alps=/shared/alps_s2
      run jobs on an existing Dask cluster (job folders on a shared file system)
\b
The OGC API – Processes landing page is http://HOST:PORT/ (OpenAPI at /openapi.json).
"""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _data_dirs(values: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for text in values:
        name, sep, path = text.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise click.BadParameter(f"{text!r}: expected NAME=PATH", param_hint="--data-dir")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise click.BadParameter(
                f"{name!r}: names are letters, digits, - and _", param_hint="--data-dir"
            )
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise click.BadParameter(f"{path}: no such folder", param_hint="--data-dir")
        out[name] = folder
    return out


@click.command("serve", epilog=EPILOG)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Dask scheduler to run jobs on (default: a local cluster in this process).",
)
@click.option(
    "--max-jobs",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Jobs run at once; the others wait in the queue.",
)
@click.option(
    "--data-dir",
    "data_dirs",
    multiple=True,
    metavar="NAME=PATH",
    help="A folder of images users may process, under a name; repeatable (the allow-list).",
)
@click.option(
    "--jobs-dir",
    default="tio-jobs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the job list (jobs.sqlite) and of one folder per job.",
)
@click.option(
    "--token-env",
    default="TIO_TOKEN",
    show_default=True,
    metavar="VAR",
    help="Environment variable holding the bearer token for submitting and cancelling "
    "(required when --host is not a loopback address).",
)
@click.option(
    "--require-token",
    is_flag=True,
    help="Require the token even on a loopback address.",
)
@click.option("--max-area", default=2500.0, show_default=True, help="Largest area, km2.")
@click.option("--max-dates", default=100, show_default=True, help="Most dates in one job.")
def serve_cmd(
    host,
    port,
    scheduler,
    max_jobs,
    data_dirs,
    jobs_dir,
    token_env,
    require_token,
    max_area,
    max_dates,
):
    """Serve the web portal (/portal/) and the OGC API – Processes (/) for TIO jobs.

    Jobs run on Dask, at most --max-jobs at once, each in its own folder under
    --jobs-dir with its tio.log; the job list survives a restart (jobs that were
    running are marked failed with a message). Images come only from the --data-dir
    folders."""
    folders = _data_dirs(data_dirs)
    token = os.environ.get(token_env, "").strip() or None
    if require_token or not _loopback(host):
        if not token:
            click.echo(
                f"error: listening on {host} needs a bearer token: set the environment "
                f"variable {token_env} (at least 16 characters), e.g. "
                f"{token_env}=$(openssl rand -hex 24)",
                err=True,
            )
            sys.exit(2)
        if len(token) < 16:
            click.echo(f"error: the token in {token_env} is shorter than 16 characters", err=True)
            sys.exit(2)
    else:
        token = None  # loopback: only local users can reach the server
    import uvicorn

    from tio.web.app import Settings, create_app
    from tio.web.schema import Limits

    jobs_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        jobs_dir=jobs_dir.resolve(),
        data_dirs=folders,
        max_jobs=max_jobs,
        scheduler=scheduler,
        token=token,
        limits=Limits(max_area_km2=max_area, max_dates=max_dates),
    )
    app = create_app(settings)
    click.echo(
        f"TIO portal on http://{host}:{port}/portal/ ; OGC API on http://{host}:{port}/ ; "
        f"jobs in {settings.jobs_dir}" + (" ; token required" if token else ""),
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=20)
