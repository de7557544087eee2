"""Benchmarks: each script prints a table and writes JSON next to docs/benchmarks.md."""
