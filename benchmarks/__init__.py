"""Benchmarks: separate from the tests; each script runs alone and writes a JSON record."""
