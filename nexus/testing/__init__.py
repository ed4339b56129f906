"""Test doubles and process helpers shipped with the package, so users can try Nexus offline."""
