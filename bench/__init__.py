"""Benchmarks of the running system (`make bench`); see bench/README.md."""
