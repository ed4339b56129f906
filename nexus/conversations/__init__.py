"""Conversation tracking: which stored requests continue, fork, compact or spawn which."""
