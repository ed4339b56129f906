"""The client-facing proxy: an RSGI application served by Granian."""
