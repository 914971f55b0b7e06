"""Safe access to the files of a job folder.

A requested path is refused when it is absolute, holds a ``..`` or hidden part,
a backslash or a NUL, or when the file it resolves to (after following every
symbolic link) lies outside the job folder: no traversal, no symlink escape.
"""

from __future__ import annotations

import mimetypes
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

mimetypes.add_type("application/x-netcdf", ".nc")
mimetypes.add_type("image/tiff; application=geotiff", ".tif")
mimetypes.add_type("application/geo+json", ".geojson")
mimetypes.add_type("text/plain", ".log")
mimetypes.add_type("text/plain", ".pgw")
mimetypes.add_type("application/toml", ".toml")


class Refused(Exception):
    """The path may not be served (the message says why, without revealing the disk)."""


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def safe_file(root: Path, relative: str) -> Path:
    """The real path of ``relative`` inside ``root``; :class:`Refused` otherwise."""
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/"):
        raise Refused("not a relative path")
    parts = PurePosixPath(relative).parts
    if any(p in ("..", ".") or p.startswith(".") for p in parts):
        raise Refused("path parts may not be '..' or hidden")
    real_root = root.resolve()
    try:
        real = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        raise Refused("no such file") from None
    if not _inside(real, real_root):
        raise Refused("outside the job folder")
    if not real.is_file():
        raise Refused("not a file")
    return real


def list_files(root: Path) -> list[str]:
    """Relative paths of the job's files: regular, not hidden, resolving inside ``root``."""
    real_root = root.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if _inside(real, real_root) and real.is_file():
                out.append(path.relative_to(root).as_posix())
    return out


def media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def zip_folder(root: Path, prefix: str) -> Path:
    """A temporary zip of :func:`list_files` (the caller deletes it)."""
    fd, name = tempfile.mkstemp(suffix=".zip", prefix="tio-job-")
    os.close(fd)
    with zipfile.ZipFile(name, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for rel in list_files(root):
            zf.write(safe_file(root, rel), f"{prefix}/{rel}")
    return Path(name)
