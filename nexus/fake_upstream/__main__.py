"""`python -m nexus.fake_upstream`: the fake Anthropic API's own command line (`nexus fake-upstream` too)."""

from nexus.fake_upstream.server import main

main()
