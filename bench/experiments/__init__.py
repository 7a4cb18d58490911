"""One-off measurements behind decisions recorded in bench/README.md; each runs
as `python -m bench.experiments.<name>`. `make bench` runs none of them."""
