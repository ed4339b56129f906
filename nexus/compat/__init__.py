"""Drop-in compatibility with the reference system Nexus replaces: its settings, keys and links."""
