-- One row per request that went through the proxy, partitioned by day on its start time.
-- Bodies are content-addressed: the envelope (body without messages/system/tools) stays here, each
-- distinct message, system block list and tool list is stored once in content_blobs.
CREATE TABLE IF NOT EXISTS api_requests (
    request_id                  uuid        NOT NULL,
    "timestamp"                 timestamptz NOT NULL,
    project_id                  text        NOT NULL,
    account_id                  text,
    method                      text        NOT NULL,
    path                        text        NOT NULL,
    model                       text,
    request_type                text,
    request_headers             jsonb,
    envelope                    jsonb,
    system_key                  bytea,
    tools_key                   bytea,
    message_keys                bytea[],
    message_count               int,
    response_status             int,
    response_headers            jsonb,
    response_body               jsonb,
    response_streaming          boolean     NOT NULL DEFAULT false,
    input_tokens                bigint,
    output_tokens               bigint,
    cache_creation_input_tokens bigint,
    cache_read_input_tokens     bigint,
    usage                       jsonb,
    duration_ms                 int,
    first_byte_ms               int,
    tool_call_count             int,
    outcome                     text,
    error                       text,
    conversation_id             uuid,
    branch_id                   text,
    parent_request_id           uuid,
    is_subtask                  boolean     NOT NULL DEFAULT false,
    parent_task_request_id      uuid,
    current_message_hash        bytea,
    parent_message_hash         bytea,
    system_hash                 bytea,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, "timestamp")
) PARTITION BY RANGE ("timestamp");

-- Rows whose day has no partition yet are never refused: they land here.
CREATE TABLE IF NOT EXISTS api_requests_default PARTITION OF api_requests DEFAULT;

CREATE TABLE IF NOT EXISTS content_blobs (
    key        bytea       PRIMARY KEY,   -- xxh3-128 of the part's JSON
    kind       smallint    NOT NULL,      -- 0 message, 1 system, 2 tools
    body       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Newest-first listing (GET /api/requests) and time-bounded scans.
CREATE INDEX IF NOT EXISTS api_requests_ts_idx ON api_requests ("timestamp" DESC, request_id DESC);
-- Per-project listing and usage (dashboard, GET /api/requests?project_id=).
CREATE INDEX IF NOT EXISTS api_requests_project_ts_idx ON api_requests (project_id, "timestamp" DESC);
-- Per-account usage windows.
CREATE INDEX IF NOT EXISTS api_requests_account_ts_idx ON api_requests (account_id, "timestamp" DESC)
    WHERE account_id IS NOT NULL;
-- A conversation's requests in order (conversation view, GET /api/requests?conversation_id=).
CREATE INDEX IF NOT EXISTS api_requests_conversation_idx ON api_requests (conversation_id, "timestamp")
    WHERE conversation_id IS NOT NULL;
-- The linker's parent lookups after a restart.
CREATE INDEX IF NOT EXISTS api_requests_current_hash_idx ON api_requests (current_message_hash)
    WHERE current_message_hash IS NOT NULL;

-- lz4 TOAST compression for the large jsonb columns, where the server was built with it.
DO $$
BEGIN
    ALTER TABLE api_requests ALTER COLUMN response_body SET COMPRESSION lz4;
    ALTER TABLE api_requests ALTER COLUMN envelope SET COMPRESSION lz4;
    ALTER TABLE content_blobs ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value OR undefined_object THEN
    RAISE NOTICE 'lz4 compression not available; keeping the default';
END $$;
