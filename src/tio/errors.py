"""Exceptions raised by TIO.

Every error TIO raises on purpose derives from :class:`TioError`, so callers
(the CLI, the web service) can catch one class and show its message. The
subclasses are narrow: they say which stage failed and why.
"""


class TioError(Exception):
    """Root of all TIO errors. The message is meant for the user."""


class ConfigError(TioError, ValueError):
    """A configuration value is invalid (names the parameter, value and what is allowed)."""


class InputError(TioError):
    """An input file or product is missing, unreadable or unusable (names the file)."""


class NoOverlapError(InputError):
    """Two rasters, or a raster and the area of interest, do not overlap."""


class NetworkError(TioError):
    """The pair network cannot be built or inverted (too few dates, no pairs...)."""


class CorrelationError(TioError):
    """Correlation of an image pair failed (window larger than the image...)."""


class InversionError(TioError):
    """The time-series inversion cannot be carried out on the given pairs."""


class OutputError(TioError):
    """A product cannot be written (unwritable folder, full disk...)."""


class CatalogError(TioError):
    """A catalogue search failed, or found nothing usable (names the catalogue URL)."""


class DownloadError(TioError):
    """A file could not be fetched or verified (names the URL or the file)."""


class AuthError(DownloadError, CatalogError):
    """A server refused the credentials (HTTP 401/403), or none were found."""
