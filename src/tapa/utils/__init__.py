"""Small helpers shared by benchmarks and tests."""
