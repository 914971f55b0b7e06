"""The job list (SQLite) and the manager that runs jobs on Dask, at most N at once.

Every job has a folder ``JOBS_DIR/<id>/`` holding ``job.toml`` (the full
configuration), ``request.json`` (what was submitted), the run's products and
its ``tio.log``. The list of jobs and their status lives in ``JOBS_DIR/jobs.sqlite``
so that it survives a restart of the server. Status values are those of OGC API –
Processes: ``accepted`` (queued), ``running``, ``successful``, ``failed``,
``dismissed`` (cancelled).

At start, jobs the previous server left ``running`` are marked ``failed`` with a
message saying so (their finished stages are kept: submitting the same request
again resumes them); ``accepted`` jobs are queued again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from .worker import CANCEL_FILE, execute_job

log = logging.getLogger("tio.web")

STATUSES = ("accepted", "running", "successful", "failed", "dismissed")
FINISHED = ("successful", "failed", "dismissed")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    progress INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    updated TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    request TEXT NOT NULL DEFAULT '{}'
)
"""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    status: str
    message: str
    progress: int
    created: str
    started: str | None
    finished: str | None
    updated: str
    title: str
    request: dict


class JobStore:
    """Jobs in a SQLite file; safe to use from several threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, job_id: str, title: str, request: dict) -> Job:
        t = now()
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, message, created, updated, title, request) "
                "VALUES (?, 'accepted', 'queued', ?, ?, ?, ?)",
                (job_id, t, t, title, json.dumps(request)),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, status, message, progress, created, started, finished, updated, "
                "title, request FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        return _job(row) if row else None

    def list(self, status: str | None = None, limit: int = 1000) -> list[Job]:
        query = (
            "SELECT id, status, message, progress, created, started, finished, updated, "
            "title, request FROM jobs"
        )
        args: tuple = ()
        if status:
            query += " WHERE status = ?"
            args = (status,)
        query += " ORDER BY created DESC, rowid DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [_job(r) for r in rows]

    def update(self, job_id: str, **values) -> None:
        values["updated"] = now()
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))


def _job(row) -> Job:
    return Job(*row[:9], request=json.loads(row[9] or "{}"))


# progress read from the run's tio.log: (text of a log line, percent reached)
_MILESTONES = [
    ("scenes from", 5),
    ("stack: ", 20),
    ("network: ", 22),
    ("correct: ", 78),
    ("invert: ", 85),
    ("present: quicklooks", 88),
    ("present: animation", 91),
    ("present: points", 93),
    ("present: overlays", 95),
    ("present: report", 97),
    ("report: ", 98),
    ("done in ", 100),
]
_PAIRS = re.compile(r"network: \d+ dates, (\d+) pairs")


def progress_from_log(text: str) -> tuple[int, str]:
    """Percent done and the last log message, from the text of a run's ``tio.log``."""
    percent, last, n_pairs, correlated = 0, "", 0, 0
    for line in text.splitlines():
        msg = line.split(" tio: ", 1)[-1] if " tio: " in line else line
        if " DEBUG " not in line:
            last = msg
        m = _PAIRS.search(msg)
        if m:
            n_pairs = int(m.group(1))
        if msg.startswith("correlated "):
            correlated += 1
            if n_pairs:
                percent = max(percent, 22 + int(53 * min(correlated, n_pairs) / n_pairs))
        elif msg.startswith("correlate: ") and "already done" in msg:
            percent = max(percent, 22)
        for key, value in _MILESTONES:
            if msg.startswith(key):
                percent = max(percent, value)
    return percent, last


def _stop_orphan(folder: Path) -> None:
    """Stop a job's ``tio run`` left behind by a server that was killed, if still running."""
    import os
    import signal

    try:
        pid = int((folder / ".tio" / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError):
        return
    if str(folder).encode() in cmdline and b" tio run " in cmdline:
        try:
            os.killpg(pid, signal.SIGTERM)
            log.warning("stopped the run of %s left by the previous server (pid %d)", folder, pid)
        except OSError:
            pass


class JobManager:
    """Queues jobs, runs at most ``max_jobs`` at once on Dask, follows their progress."""

    def __init__(
        self,
        jobs_dir: Path,
        *,
        max_jobs: int = 2,
        scheduler: str | None = None,
        poll: float = 0.5,
    ):
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.jobs_dir / "jobs.sqlite")
        self.max_jobs = max_jobs
        self.scheduler = scheduler
        self.poll = poll
        self._futures: dict = {}
        self._client = None
        self._cluster = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._recover()

    # -- lifecycle ------------------------------------------------------------
    def _recover(self) -> None:
        """Jobs left running by a previous server are failed; queued ones stay queued."""
        for job in self.store.list("running"):
            _stop_orphan(self.job_dir(job.id))
            self.store.update(
                job.id,
                status="failed",
                finished=now(),
                message="the server stopped while this job was running; submit it again "
                "(its finished stages are kept in the job folder)",
            )
            log.warning("job %s was running when the server stopped: marked failed", job.id)

    def start(self) -> None:
        from dask.distributed import Client, LocalCluster

        if self.scheduler:
            self._client = Client(self.scheduler, timeout="20s")
        else:
            # threads are enough: each job's work happens in its own `tio run` process
            self._cluster = LocalCluster(
                n_workers=1,
                threads_per_worker=self.max_jobs,
                processes=False,
                dashboard_address=None,
            )
            self._client = Client(self._cluster)
        self._thread = threading.Thread(target=self._loop, name="tio-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the jobs still running (marked failed) and the Dask client."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        with self._lock:
            running = list(self._futures)
        for job_id in running:
            (self.job_dir(job_id) / CANCEL_FILE).parent.mkdir(parents=True, exist_ok=True)
            (self.job_dir(job_id) / CANCEL_FILE).write_text("server shutdown")
        for job_id, fut in list(self._futures.items()):
            try:
                fut.result(timeout=15)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
            self.store.update(
                job_id,
                status="failed",
                finished=now(),
                message="the server was shut down while this job was running; submit it "
                "again (its finished stages are kept in the job folder)",
            )
            (self.job_dir(job_id) / CANCEL_FILE).unlink(missing_ok=True)
        if self._client:
            self._client.close()
        if self._cluster:
            self._cluster.close()
        self.store.close()

    # -- jobs -----------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs_dir / job_id

    def submit(self, config_toml: str, request: dict, title: str) -> Job:
        job_id = uuid.uuid4().hex
        folder = self.job_dir(job_id)
        (folder / ".tio").mkdir(parents=True)
        (folder / "job.toml").write_text(config_toml)
        (folder / "request.json").write_text(json.dumps(request, indent=2))
        job = self.store.add(job_id, title, request)
        self.wake()
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Dismiss a job: stop it if queued or running, then remove its folder."""
        with self._lock:  # not while the manager starts or finishes jobs
            job = self.store.get(job_id)
            if job is None:
                return None
            folder = self.job_dir(job_id)
            fut = self._futures.get(job_id)
            if fut is not None:  # running: the worker stops it, the manager cleans up
                (folder / ".tio").mkdir(parents=True, exist_ok=True)
                (folder / CANCEL_FILE).write_text("cancelled")
            else:
                shutil.rmtree(folder, ignore_errors=True)
            message = "cancelled by the user" if job.status not in FINISHED else "dismissed"
            self.store.update(job_id, status="dismissed", message=message, finished=now())
        return self.store.get(job_id)

    def wake(self) -> None:
        self._step()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._step()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("job manager")

    def _step(self) -> None:
        if self._client is None:
            return
        with self._lock:
            # finished futures
            for job_id, fut in list(self._futures.items()):
                if fut.done():
                    del self._futures[job_id]
                    self._finish(job_id, fut)
                else:
                    self._follow(job_id)
            # start queued jobs, oldest first
            free = self.max_jobs - len(self._futures)
            if free > 0:
                queued = sorted(self.store.list("accepted"), key=lambda j: j.created)
                for job in queued[:free]:
                    folder = self.job_dir(job.id)
                    fut = self._client.submit(
                        execute_job, str(folder), pure=False, key=f"tio-job-{job.id}"
                    )
                    self._futures[job.id] = fut
                    self.store.update(
                        job.id, status="running", started=now(), message="started", progress=0
                    )

    def _follow(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or job.status != "running":
            return
        logfile = self.job_dir(job_id) / "tio.log"
        try:
            text = logfile.read_text(errors="replace")
        except OSError:
            return
        percent, last = progress_from_log(text)
        self.store.update(job_id, progress=min(percent, 99), message=last[:300] or "running")

    def _finish(self, job_id: str, fut) -> None:
        try:
            outcome = fut.result()
        except Exception as exc:  # noqa: BLE001 - a worker crash is a failed job
            outcome = {"status": "failed", "message": f"worker error: {exc}"}
        job = self.store.get(job_id)
        folder = self.job_dir(job_id)
        if job is not None and job.status == "dismissed":
            shutil.rmtree(folder, ignore_errors=True)
            return
        if outcome["status"] == "successful":
            self.store.update(
                job_id, status="successful", progress=100, finished=now(), message="finished"
            )
        else:
            self.store.update(
                job_id,
                status=outcome["status"],
                finished=now(),
                message=str(outcome.get("message", ""))[:500],
            )
