"""Command-line interface: one small module per command.

The modules here only parse arguments and import the heavy code (numpy,
rasterio, xarray...) inside the command, so ``tio --help`` is instant.
"""
