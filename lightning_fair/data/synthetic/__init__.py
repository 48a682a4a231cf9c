"""Synthetic datasets written by the package in real on-disk formats (exported by ``lightning_fair.data``)."""
