"""The data API under `/api/*` served by the proxy: read-only views of what storage holds."""
