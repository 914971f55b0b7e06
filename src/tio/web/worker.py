"""What a Dask worker runs for one job: ``tio run`` in a child process.

The run happens in a child process so that a job can really be stopped: the
worker watches for the file ``.tio/cancel`` in the job folder (written by the
server on ``DELETE /jobs/{id}``) and terminates the child when it appears. The
job folder must be reachable from the worker (same machine, or a shared file
system when ``--scheduler`` names a remote cluster).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CANCEL_FILE = ".tio/cancel"
CONSOLE_FILE = ".tio/console.log"


def execute_job(job_dir: str, poll: float = 0.5) -> dict:
    """Run the job whose ``job.toml`` is in ``job_dir``; returns ``{"status", "message"}``.

    ``status`` is ``successful``, ``failed`` or ``dismissed``; ``message`` is the
    last error line of the run for a failure.
    """
    folder = Path(job_dir)
    (folder / ".tio").mkdir(parents=True, exist_ok=True)
    cancel = folder / CANCEL_FILE
    if cancel.exists():
        return {"status": "dismissed", "message": "cancelled before it started"}
    cmd = [sys.executable, "-m", "tio", "run", "--config", str(folder / "job.toml"), "--quiet"]
    cmd += ["--verbose", "-o", str(folder)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    with open(folder / CONSOLE_FILE, "wb") as console:
        proc = subprocess.Popen(
            cmd,
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        (folder / ".tio" / "pid").write_text(str(proc.pid))
        while proc.poll() is None:
            if cancel.exists():
                _stop(proc)
                return {"status": "dismissed", "message": "cancelled while running"}
            time.sleep(poll)
    if proc.returncode == 0:
        return {"status": "successful", "message": "finished"}
    text = (folder / CONSOLE_FILE).read_text(errors="replace").strip().splitlines()
    errors = [line for line in text if line.startswith("error:")]
    message = errors[-1][len("error:") :].strip() if errors else (text[-1] if text else "")
    return {
        "status": "failed",
        "message": message or f"tio run ended with exit code {proc.returncode}",
    }


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
