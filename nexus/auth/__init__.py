"""Who a request is for and who pays: projects, upstream credentials (API keys, OAuth), client keys."""
