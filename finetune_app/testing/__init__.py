"""Test and demo support (tiny random-weight models built offline); not imported by the engine."""
