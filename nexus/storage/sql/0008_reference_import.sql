-- `nexus import-reference` (docs/migrating.md): what it keeps of a reference-system database beside the
-- requests it writes into api_requests, and where an interrupted import resumes.

-- One row per reference database and table: the last (timestamp, request_id) stored, in the same
-- transaction as the rows, so a run that is stopped resumes exactly after what it stored.
CREATE TABLE IF NOT EXISTS reference_import_state (
    source         text        NOT NULL,  -- host:port/database of the reference (never its credentials)
    table_name     text        NOT NULL,
    last_timestamp timestamptz,
    last_key       text,
    rows_read      bigint      NOT NULL DEFAULT 0,
    imported       bigint      NOT NULL DEFAULT 0,
    skipped        bigint      NOT NULL DEFAULT 0,
    failed         bigint      NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    relink_from    timestamptz,            -- the earliest row stored since the last relink (NULL: none)
    PRIMARY KEY (source, table_name)
);

-- The reference's projects, without their secrets (the Slack webhook URL and the `msl_` project key
-- are not copied): names, the default account and the system-prompt override, for the record.
CREATE TABLE IF NOT EXISTS reference_projects (
    project_id            text        PRIMARY KEY,
    name                  text,
    default_account_id    text,
    is_private            boolean,
    disabled              boolean,
    slack_enabled         boolean,
    slack_channel         text,
    system_prompt_enabled boolean,
    system_prompt         jsonb,
    created_at            timestamptz,
    updated_at            timestamptz,
    source                text        NOT NULL,
    imported_at           timestamptz NOT NULL DEFAULT now()
);

-- The reference's AI analyses of conversations, keyed as there by (conversation_id, branch_id): the
-- import keeps the reference's conversation ids wherever Nexus's linker starts a conversation at the
-- same request, so most analyses still name a Nexus conversation.
CREATE TABLE IF NOT EXISTS reference_analyses (
    conversation_id        uuid        NOT NULL,
    branch_id              text        NOT NULL,
    status                 text,
    model_used             text,
    analysis_content       text,
    analysis_data          jsonb,
    raw_response           jsonb,
    error_message          text,
    retry_count            int,
    prompt_tokens          int,
    completion_tokens      int,
    processing_duration_ms int,
    custom_prompt          text,
    generated_at           timestamptz,
    completed_at           timestamptz,
    created_at             timestamptz,
    updated_at             timestamptz,
    source                 text        NOT NULL,
    imported_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, branch_id)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_reader') THEN
        GRANT SELECT ON reference_import_state, reference_projects, reference_analyses TO nexus_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'no right to grant on the reference import tables; skipping';
END $$;
