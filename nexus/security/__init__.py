"""What protects a gateway that other people can reach: who may read the data, how often a wrong key
may be tried, which web pages may call it. Each rule lives in one module here and is used by both
services (the proxy and the dashboard)."""
