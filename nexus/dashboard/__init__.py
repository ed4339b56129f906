"""The dashboard: its own Robyn service on `DASHBOARD_PORT`, reading the database only."""
