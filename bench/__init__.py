"""Benchmarks: each prints its figures with a ratio to a baseline measured in the same run."""
