"""Oracles: slow pure-Python twins of parts of the Rust core (``nexus._core``), used by tests only.

Each module mirrors one piece with the same interface and semantics, written for clarity rather than
speed (and, where it helps, in another way), so that property tests can compare the two on any input:
``safe`` (JSON and text made safe for PostgreSQL), ``linking`` (the linking facts of a request body),
``sse`` (the SSE observer). Pieces that a well-kept reader already checks have no twin: the body split
is checked against orjson (``test_body_split.py``), the COPY encoder against PostgreSQL itself
(``test_copy_core.py``, ``test_copy_safe.py``).
"""
