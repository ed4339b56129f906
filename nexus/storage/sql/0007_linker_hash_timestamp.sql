-- The linker's lookups by history hash read the newest few rows of each hash (see
-- nexus/conversations/repository.py): with the timestamp in the index they stop after those few, where
-- an index on the hash alone made PostgreSQL read and sort every row that ever had it, so the same body
-- sent over and over made each lookup slower. This index answers equality on the hash as well.
CREATE INDEX IF NOT EXISTS api_requests_current_hash_ts_idx ON api_requests (current_message_hash, "timestamp" DESC)
    WHERE current_message_hash IS NOT NULL;
DROP INDEX IF EXISTS api_requests_current_hash_idx;
