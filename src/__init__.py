"""Thin entry points (batch pipeline, serving API, monitoring) around `nbs_lib`, the library exported from the notebooks."""
