"""TIO: time series of ground displacement from optical satellite images."""

__version__ = "0.1.0"
