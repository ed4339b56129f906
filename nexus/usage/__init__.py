"""Token usage per account and per project, read from `api_requests`: windows, rolling series, daily sums."""
