"""Benchmarks: throughput and efficiency figures, run by hand (`python -m benchmarks.<name>`)."""
