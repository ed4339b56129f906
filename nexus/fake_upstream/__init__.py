"""The faithful fake Anthropic API (`nexus fake-upstream`), so Nexus can be tried, tested and benchmarked
offline: `server` (the RSGI application and its command line), `scripted` (scripted replies, replay and
recording), `scenario` (the faults a request can ask for)."""
