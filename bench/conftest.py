"""bench/ is run on demand: `pytest bench/ --benchmark-enable` (pyproject disables benchmarks by default)."""
