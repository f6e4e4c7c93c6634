"""Benchmark harness: warm-up, repeats, percentiles, JSON/Markdown/PNG."""
