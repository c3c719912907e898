"""Benchmarks that print figures (make bench-*)."""
