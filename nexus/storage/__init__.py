"""Storage: PostgreSQL schema and migrations, the batch writer, the spool, and the read queries."""
