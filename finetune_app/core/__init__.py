"""The engine. Nothing in this package imports Qt (tests/test_architecture.py checks it)."""
