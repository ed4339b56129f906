-- GET /api/requests/{id}/subtasks reads the sub-agent requests a request spawned
-- (`parent_task_request_id = $1`, newest first; nexus/storage/requests_repo.py). Without an index it
-- read every partition in full: ~300 ms at 230,000 stored requests and growing with them
-- (bench/dashboard.py). Few rows have a parent task, so the partial index stays small.
CREATE INDEX IF NOT EXISTS api_requests_parent_task_idx ON api_requests (parent_task_request_id, "timestamp" DESC)
    WHERE parent_task_request_id IS NOT NULL;
