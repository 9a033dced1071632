"""Benchmarks of dreamer_dynamics (docs/benchmarks.md); run them all with `python benchmarks/run_all.py`."""
