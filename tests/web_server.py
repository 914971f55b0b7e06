"""Start and stop a real ``tio serve`` (uvicorn) on 127.0.0.1 and a free port, for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tio serve`` in a subprocess; ``url`` is its base address."""

    def __init__(self, jobs_dir: Path, data_dirs: dict[str, Path], *extra: str, env=None):
        self.jobs_dir = Path(jobs_dir)
        self.data_dirs = data_dirs
        self.extra = list(extra)
        self.env = {k: v for k, v in os.environ.items() if k != "TIO_TOKEN"}
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = self.jobs_dir.parent / f"serve-{self.jobs_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Server:
        self.port = self.port or free_port()  # a restart keeps the address
        cmd = [sys.executable, "-m", "tio", "serve", "--port", str(self.port)]
        cmd += ["--jobs-dir", str(self.jobs_dir), *self.extra]
        for name, path in self.data_dirs.items():
            cmd += ["--data-dir", f"{name}={path}"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tio serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/conformance", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"tio serve did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash would."""
        if self.proc:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 60) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def wait_for(client: httpx.Client, job_id: str, statuses, timeout: float = 400) -> dict:
    """Poll ``/jobs/{id}`` until its status is one of ``statuses``; returns the last status."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        info = client.get(f"/jobs/{job_id}").json()
        seen.append(info["progress"])
        if info["status"] in statuses:
            info["_progress_seen"] = seen
            return info
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not {statuses} after {timeout} s: {info}")
