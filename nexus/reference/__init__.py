"""Pure-Python reference implementations, used by tests only, never in production.

Each module here mirrors a piece of the Rust core (``nexus._core``) with the same interface and
semantics, written for clarity rather than speed, so tests can compare the two.
"""
