-- AI analysis of a conversation branch (docs/analysis.md): one row per (conversation, branch) that is
-- both the queue entry and the result, as in the reference system's migration 011. Workers claim
-- pending rows with FOR UPDATE SKIP LOCKED; every claim gets a fresh token (its sha256 kept in
-- claim_token_hash) that fences the claim: a worker whose job was returned to the queue by the
-- watchdog, or regenerated, can no longer write its result, and only the current claim's analysis
-- request is let through the gateway as an analysis (not linked into the conversation it reads).
DO $$
BEGIN
    CREATE TYPE conversation_analysis_status AS ENUM ('pending', 'processing', 'completed', 'failed');
EXCEPTION WHEN duplicate_object THEN
    NULL;
END $$;

CREATE TABLE IF NOT EXISTS conversation_analyses (
    id                     bigserial   PRIMARY KEY,
    conversation_id        uuid        NOT NULL,
    branch_id              text        NOT NULL DEFAULT 'main',
    project_id             text,
    status                 conversation_analysis_status NOT NULL DEFAULT 'pending',
    provider               text,
    model_used             text,
    analysis_content       text,           -- the result as markdown
    analysis_data          jsonb,          -- the validated JSON object (unknown keys kept)
    raw_response           text,           -- the model's last reply as text, bounded (kept when it failed)
    error_message          text,
    retry_count            int         NOT NULL DEFAULT 0,   -- failed attempts since it was queued
    attempts               int         NOT NULL DEFAULT 0,   -- claims since it was queued
    not_before             timestamptz NOT NULL DEFAULT now(),  -- backoff: not claimed before this
    claimed_by             text,
    claim_token_hash       bytea,
    claimed_at             timestamptz,
    request_id             uuid,           -- the gateway's X-Request-ID of the last analysis request
    custom_prompt          text,
    generated_at           timestamptz,
    completed_at           timestamptz,
    processing_duration_ms int,
    prompt_tokens          int,
    completion_tokens      int,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, branch_id)
);
-- The claim: the oldest pending row whose backoff has passed.
CREATE INDEX IF NOT EXISTS conversation_analyses_pending_idx ON conversation_analyses (not_before, id)
    WHERE status = 'pending';
-- The watchdog: processing rows claimed too long ago.
CREATE INDEX IF NOT EXISTS conversation_analyses_processing_idx ON conversation_analyses (claimed_at)
    WHERE status = 'processing';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_writer') THEN
        GRANT SELECT, INSERT, UPDATE ON conversation_analyses TO nexus_writer;
        GRANT USAGE ON SEQUENCE conversation_analyses_id_seq TO nexus_writer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_reader') THEN
        GRANT SELECT ON conversation_analyses TO nexus_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'no right to grant on conversation_analyses; skipping';
END $$;
