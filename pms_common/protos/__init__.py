"""Python stubs generated from ../../proto/*.proto (committed; `make proto`
regenerates them and tests/test_protos.py fails when they are stale)."""
