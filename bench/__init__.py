"""Benchmarks of fedstream: ``python -m bench.pipeline`` measures the streaming job against a bare loop."""
