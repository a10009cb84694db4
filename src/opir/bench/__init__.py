"""Benchmarks. Every figure is a ratio or difference against a baseline timed
in the same run, interleaved with it, because the machines are shared and noisy."""
