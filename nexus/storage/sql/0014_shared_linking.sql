-- Linking across workers and machines (docs/scaling.md): what the linker knows, shared by every
-- worker of every instance and written when a request is decided, before it is forwarded. Rows are
-- small (no bodies) and kept for LINK_LOOKBACK_DAYS (the batch writer's hourly upkeep deletes older
-- ones); api_requests stays the record, these tables only serve linking decisions.
CREATE TABLE IF NOT EXISTS link_requests (
    request_id uuid PRIMARY KEY,
    project_id text NOT NULL,
    "timestamp" timestamptz NOT NULL,
    request_type text NOT NULL,
    current_message_hash bytea,
    conversation_id uuid,
    branch_id text,
    parent_request_id uuid,
    is_subtask boolean NOT NULL DEFAULT false,
    parent_task_request_id uuid,
    session_id text,
    agent_id text,
    status smallint NOT NULL DEFAULT 0  -- 0 in flight (or a sub-agent's success), 1 succeeded, 2 failed
);
CREATE INDEX IF NOT EXISTS link_requests_hash_idx ON link_requests (current_message_hash, "timestamp");
-- A parent's children by history: "has it a child with another history than mine?" in two probes.
CREATE INDEX IF NOT EXISTS link_requests_parent_idx ON link_requests (parent_request_id, current_message_hash)
    WHERE parent_request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS link_requests_time_idx ON link_requests ("timestamp");
-- Turns whose outcome is not recorded yet: a sub-agent's first request whose launch is not found waits
-- while one of its session is in flight. Rows leave this index when their outcome is written.
CREATE INDEX IF NOT EXISTS link_requests_in_flight_idx ON link_requests (project_id, session_id, "timestamp")
    WHERE status = 0 AND request_type IN ('main', 'compaction');

-- Sub-agent launches (an Agent/Task tool call in a reply), claimed by the sub-agent's first request.
CREATE TABLE IF NOT EXISTS link_invocations (
    request_id uuid NOT NULL,
    n integer NOT NULL,
    tool_use_id text NOT NULL,
    project_id text NOT NULL,
    conversation_id uuid,
    session_id text,
    "timestamp" timestamptz NOT NULL,
    prompt_key bytea NOT NULL,
    claimed boolean NOT NULL DEFAULT false,
    PRIMARY KEY (request_id, n)
);
CREATE INDEX IF NOT EXISTS link_invocations_prompt_idx ON link_invocations (prompt_key, "timestamp");

-- Compaction replies (canonical text), found by the first request after a compaction.
CREATE TABLE IF NOT EXISTS link_compactions (
    request_id uuid PRIMARY KEY,
    project_id text NOT NULL,
    conversation_id uuid,
    branch_id text,
    "timestamp" timestamptz NOT NULL,
    summary text NOT NULL,
    session_id text
);
CREATE INDEX IF NOT EXISTS link_compactions_project_idx ON link_compactions (project_id, "timestamp");

-- The last sub-agent branch number of each conversation (subtask_N).
CREATE TABLE IF NOT EXISTS link_subtasks (
    conversation_id uuid PRIMARY KEY,
    last_number integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_writer') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON link_requests, link_invocations, link_compactions, link_subtasks
            TO nexus_writer;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'no right to grant; link tables not granted to nexus_writer';
END $$;
