"""The web portal and OGC API – Processes service of TIO (``tio serve``).

Modules:

==========  ================================================================
schema      the job request (area, dates, data source, parameters), limits
jobs        the SQLite job list and the Dask-backed job manager
worker      what a Dask worker runs for one job (``tio run`` in a subprocess)
files       safe access to a job's files (no traversal, no symlink escape)
app         the ASGI application: OGC endpoints, portal API, static pages
==========  ================================================================
"""
