"""Benchmarks of dreamer_dynamics (docs/benchmarks.md); run them all with `python -m benchmarks.run_all`."""
