"""HTTP with retries, and a download cache keyed by product id.

:func:`request` sends one HTTP request and retries it, with exponential backoff,
on 429, 5xx, timeouts and dropped connections (a bounded number of attempts,
then :class:`tio.errors.DownloadError` naming the URL). 401 and 403 raise
:class:`tio.errors.AuthError` at once, with a message about credentials.

:class:`Cache` keeps downloaded files under ``<cache>/<product id>/<file name>``:

* a download goes to ``<name>.part`` and is resumed from where it stopped with an
  HTTP ``Range`` request (after a dropped connection, or in a later run);
* the file is verified against the checksum the catalogue gives (a STAC
  ``file:checksum`` multihash, or an OData ``Checksum`` entry) and renamed to its
  final name only then; on a mismatch the partial file is removed and the cache
  is left as it was;
* when the cache is larger than its limit, the least recently used products are
  evicted, oldest first (never the file just fetched).

Credentials for the Copernicus Data Space (``CDSE_USERNAME`` / ``CDSE_PASSWORD``,
else ``~/.netrc``) are read by :func:`cdse_credentials`; they are sent only to
the token endpoint and never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import netrc
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import AuthError, DownloadError

log = logging.getLogger(__name__)

__all__ = [
    "Cache",
    "Checksum",
    "cdse_credentials",
    "cdse_token",
    "download_cdse_safe",
    "parse_multihash",
    "request",
]

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
CHUNK = 1 << 16

CDSE_TOKEN_URL = (
    "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
)
CDSE_ODATA_URL = "https://catalogue.dataspace.copernicus.eu/odata/v1"
CDSE_DOWNLOAD_URL = "https://zipper.dataspace.copernicus.eu/odata/v1"


def _session():
    import requests

    s = requests.Session()
    s.headers["User-Agent"] = "tio"
    return s


def _auth_message(url: str, status: int) -> str:
    what = "refused the credentials" if status == 401 else "denied access"
    return (
        f"{url}: HTTP {status}, the server {what}. Check the user name and password "
        "(for the Copernicus Data Space: CDSE_USERNAME and CDSE_PASSWORD, or a machine "
        "entry in ~/.netrc) and that the account may read this product"
    )


def request(
    method: str,
    url: str,
    *,
    session=None,
    attempts: int = 5,
    backoff: float = 0.5,
    timeout: float = 60.0,
    **kwargs,
):
    """Send a request; retry on 429, 5xx, timeouts and connection errors.

    Waits ``backoff * 2**k`` seconds (at most 30 s, or the server's
    ``Retry-After``) between ``attempts`` tries. Returns the
    :class:`requests.Response` (status < 400; with ``stream=True`` its body is
    not read yet).

    Raises
    ------
    AuthError
        HTTP 401 or 403.
    DownloadError
        Any other HTTP error, or still failing after ``attempts`` tries.
    """
    import requests

    s = session or _session()
    last = ""
    for k in range(attempts):
        try:
            resp = s.request(method, url, timeout=timeout, **kwargs)
        except (requests.Timeout, requests.ConnectionError) as exc:
            last = f"{type(exc).__name__}"
            wait = None
        else:
            if resp.status_code in (401, 403):
                resp.close()
                raise AuthError(_auth_message(url, resp.status_code))
            if resp.status_code not in RETRY_STATUS:
                if resp.status_code >= 400:
                    resp.close()
                    raise DownloadError(f"{url}: HTTP {resp.status_code} {resp.reason}")
                return resp
            last = f"HTTP {resp.status_code}"
            wait = resp.headers.get("Retry-After")
            resp.close()
        if k + 1 < attempts:
            try:
                delay = float(wait) if wait is not None else backoff * 2**k
            except ValueError:
                delay = backoff * 2**k
            delay = min(delay, 30.0)
            log.info("%s: %s, retrying in %.1f s (%d/%d)", url, last, delay, k + 1, attempts)
            time.sleep(delay)
    raise DownloadError(f"{url}: {last} after {attempts} attempts; try again later")


@dataclass(frozen=True)
class Checksum:
    """An expected digest: hashlib algorithm name and hex value."""

    algorithm: str
    hexdigest: str

    def new(self):
        return hashlib.new(self.algorithm)


_MULTIHASH = {0x11: "sha1", 0x12: "sha256", 0x13: "sha512", 0xD5: "md5", 0x14: "sha3_512"}


def parse_multihash(text: str) -> Checksum:
    """A STAC ``file:checksum`` (hex multihash, e.g. ``1220`` + SHA-256) as a Checksum."""
    raw = bytes.fromhex(text)
    code, size = raw[0], raw[1]
    if code not in _MULTIHASH or len(raw) != 2 + size:
        raise DownloadError(f"unsupported or malformed file:checksum {text[:12]}...")
    return Checksum(_MULTIHASH[code], raw[2:].hex())


def odata_checksum(entries: list[dict]) -> Checksum | None:
    """The checksum of an OData product (``Checksum`` list of Algorithm/Value), MD5 first."""
    by_algo = {str(e.get("Algorithm", "")).upper(): e.get("Value") for e in entries or []}
    for key, name in (("MD5", "md5"), ("SHA256", "sha256"), ("SHA3-256", "sha3_256")):
        if by_algo.get(key):
            return Checksum(name, str(by_algo[key]).lower())
    return None


def _safe_name(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
    if not out.strip("."):
        raise DownloadError(f"cannot make a cache name of {text!r}")
    return out


class Cache:
    """A download cache: ``root/<product id>/<file name>``, size-limited (bytes, None: no limit)."""

    def __init__(self, root: str | Path, limit: int | None = None):
        self.root = Path(root).expanduser()
        self.limit = limit

    def path(self, product_id: str, name: str) -> Path:
        return self.root / _safe_name(product_id) / _safe_name(name)

    def size(self) -> int:
        if not self.root.exists():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def fetch(
        self,
        url: str,
        product_id: str,
        name: str | None = None,
        *,
        checksum: Checksum | None = None,
        session=None,
        headers: dict | None = None,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 60.0,
    ) -> Path:
        """``url`` in the cache (downloaded, resumed or already there), verified.

        Raises
        ------
        AuthError, DownloadError
            Network failure (see :func:`request`), or a checksum mismatch (the
            partial file is removed, nothing else in the cache changes).
        """
        import requests

        name = name or url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
        final = self.path(product_id, name)
        if final.exists():
            os.utime(final.parent)  # recently used: evicted last
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")
        s = session or _session()
        for k in range(attempts):
            have = part.stat().st_size if part.exists() else 0
            hdrs = dict(headers or {})
            if have:
                hdrs["Range"] = f"bytes={have}-"
            resp = request(
                "GET",
                url,
                session=s,
                attempts=attempts,
                backoff=backoff,
                timeout=timeout,
                headers=hdrs,
                stream=True,
            )
            if have and resp.status_code == 206:
                log.info("%s: resuming at byte %d", url, have)
                mode = "ab"
            elif have and resp.status_code == 416:  # already complete
                resp.close()
                break
            else:
                mode = "wb"
            try:
                with resp, open(part, mode) as fh:
                    for chunk in resp.iter_content(CHUNK):
                        fh.write(chunk)
                    expected = resp.headers.get("Content-Length")
                    written = fh.tell()
                if expected is not None and resp.status_code == 200 and written < int(expected):
                    raise requests.ConnectionError(f"short body: {written} of {expected} bytes")
                break
            except OSError as exc:  # requests' errors are OSErrors too
                if not isinstance(exc, requests.RequestException):
                    raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from None
                if k + 1 == attempts:
                    raise DownloadError(
                        f"{url}: connection dropped {attempts} times; the partial file "
                        f"{part} is kept, run again to resume"
                    ) from None
                delay = min(backoff * 2**k, 30.0)
                log.info("%s: connection dropped, resuming in %.1f s", url, delay)
                time.sleep(delay)
        if checksum is not None:
            h = checksum.new()
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != checksum.hexdigest.lower():
                part.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    final.parent.rmdir()  # only if empty
                raise DownloadError(
                    f"{url}: {checksum.algorithm} checksum mismatch (got {h.hexdigest()}, "
                    f"catalogue says {checksum.hexdigest}); the partial download was removed"
                )
        os.replace(part, final)
        os.utime(final.parent)
        self.evict(keep=final.parent)
        return final

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used product folders until the cache fits its limit."""
        if self.limit is None or not self.root.exists():
            return []
        folders = [p for p in self.root.iterdir() if p.is_dir()]
        sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in folders}
        total = sum(sizes.values())
        removed = []
        for p in sorted(folders, key=lambda p: p.stat().st_mtime):
            if total <= self.limit:
                break
            if keep is not None and p.resolve() == keep.resolve():
                continue
            shutil.rmtree(p, ignore_errors=True)
            total -= sizes[p]
            removed.append(p)
            log.info("cache: evicted %s (%d bytes)", p.name, sizes[p])
        return removed


# ---- Copernicus Data Space Ecosystem -------------------------------------------------


def cdse_credentials(host: str = "identity.dataspace.copernicus.eu") -> tuple[str, str]:
    """User name and password: ``CDSE_USERNAME``/``CDSE_PASSWORD``, else ``~/.netrc``.

    Raises
    ------
    AuthError
        Neither is set.
    """
    user, password = os.environ.get("CDSE_USERNAME"), os.environ.get("CDSE_PASSWORD")
    if user and password:
        return user, password
    with contextlib.suppress(FileNotFoundError, netrc.NetrcParseError):
        entry = netrc.netrc().authenticators(host)
        if entry and entry[0] and entry[2]:
            return entry[0], entry[2]
    raise AuthError(
        "no Copernicus Data Space credentials: set CDSE_USERNAME and CDSE_PASSWORD, or add "
        f"'machine {host} login USER password PASS' to ~/.netrc"
    )


def cdse_token(*, token_url: str = CDSE_TOKEN_URL, session=None) -> str:
    """An access token for the Copernicus Data Space (the password is sent only here)."""
    user, password = cdse_credentials()
    resp = request(
        "POST",
        token_url,
        session=session,
        data={
            "client_id": "cdse-public",
            "grant_type": "password",
            "username": user,
            "password": password,
        },
    )
    try:
        return resp.json()["access_token"]
    except (ValueError, KeyError):
        raise AuthError(f"{token_url}: no access token in the answer") from None


def download_cdse_safe(
    name: str,
    cache: Cache,
    *,
    odata_url: str = CDSE_ODATA_URL,
    download_url: str = CDSE_DOWNLOAD_URL,
    token_url: str = CDSE_TOKEN_URL,
    session=None,
) -> Path:
    """The zipped SAFE product ``name`` from the Copernicus Data Space OData service.

    Looks the product up by name (its id and checksum), then downloads
    ``Products(<id>)/$value`` with a bearer token into ``cache`` (resumable,
    verified against the OData checksum).
    """
    s = session or _session()
    name = name if name.endswith(".SAFE") else f"{name}.SAFE"
    query = f"{odata_url}/Products?$filter=Name eq '{name}'"
    found = request("GET", query, session=s).json().get("value", [])
    if not found:
        raise DownloadError(f"{odata_url}: no product named {name}")
    product = found[0]
    url = f"{download_url}/Products({product['Id']})/$value"
    token = cdse_token(token_url=token_url, session=s)
    return cache.fetch(
        url,
        name,
        name.replace(".SAFE", ".SAFE.zip"),
        checksum=odata_checksum(product.get("Checksum", [])),
        session=s,
        headers={"Authorization": f"Bearer {token}"},
    )
