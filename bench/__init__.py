"""Benchmarks: ``python -m bench e2e`` and ``python -m bench merge``."""
