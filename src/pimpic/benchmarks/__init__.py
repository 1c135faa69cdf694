"""Benchmarks of the hot paths; each ``run(...)`` returns one JSON-able dict (CLI: ``pimpic
bench ...`` prints it as one line)."""
