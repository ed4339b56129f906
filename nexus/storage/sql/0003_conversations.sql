-- Conversation tracking. The linker decides each request's conversation, branch and parent before it is
-- forwarded (nexus/conversations); these columns and indexes serve its database lookups after a restart
-- or across workers, and the conversation views.
ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS session_id text;
ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS agent_id text;
-- prompt keys (xxh3-128 of the normalised input.prompt) of the Agent/Task tool calls in the reply
ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS task_prompt_keys bytea[];

-- "Does this parent already have another child?" (branching) and a conversation's tree edges.
CREATE INDEX IF NOT EXISTS api_requests_parent_idx ON api_requests (parent_request_id)
    WHERE parent_request_id IS NOT NULL;
-- A sub-agent's first request finds the reply that spawned it: task_prompt_keys @> ARRAY[key].
CREATE INDEX IF NOT EXISTS api_requests_task_prompts_idx ON api_requests USING gin (task_prompt_keys)
    WHERE task_prompt_keys IS NOT NULL;
-- A post-compaction request searches the project's recent compaction replies for its summary.
CREATE INDEX IF NOT EXISTS api_requests_compaction_idx ON api_requests (project_id, "timestamp" DESC)
    WHERE request_type = 'compaction';

-- One row per conversation, kept up to date by the batch writer from the rows it actually inserted
-- (so a replayed batch never counts twice): the conversation list pages through it by latest activity
-- instead of grouping every request.
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id             uuid        PRIMARY KEY,
    project_id                  text        NOT NULL,
    first_at                    timestamptz NOT NULL,
    last_at                     timestamptz NOT NULL,
    request_count               bigint      NOT NULL DEFAULT 0,
    input_tokens                bigint      NOT NULL DEFAULT 0,
    output_tokens               bigint      NOT NULL DEFAULT 0,
    cache_creation_input_tokens bigint      NOT NULL DEFAULT 0,
    cache_read_input_tokens     bigint      NOT NULL DEFAULT 0,
    latest_request_id           uuid
);
-- GET /api/conversations: newest activity first, keyset-paginated, optionally per project.
CREATE INDEX IF NOT EXISTS conversations_last_idx ON conversations (last_at DESC, conversation_id DESC);
CREATE INDEX IF NOT EXISTS conversations_project_last_idx ON conversations (project_id, last_at DESC, conversation_id DESC);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_writer') THEN
        GRANT SELECT, INSERT, UPDATE ON conversations TO nexus_writer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_reader') THEN
        GRANT SELECT ON conversations TO nexus_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'no right to grant on conversations; skipping';
END $$;
