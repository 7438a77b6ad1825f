"""Scripts that measure: python -m benchmarks.NAME from the repository root writes benchmarks/results/NAME.*."""
