"""Benchmarks; results in bench/results/*.json."""
