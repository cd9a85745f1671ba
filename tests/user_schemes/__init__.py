"""A researcher's own quantization method, written outside lowbit with its public API only."""
