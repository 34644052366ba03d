"""Benchmarks and conformance runs for graphopt (not installed with the package)."""
