"""Bringing a reference-system database into Nexus: `nexus import-reference` (docs/migrating.md)."""
