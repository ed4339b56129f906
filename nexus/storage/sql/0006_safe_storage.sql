-- Storage that no record can stop (issue "Safe on a network").
-- The encoder repairs what PostgreSQL cannot hold (NUL, lone surrogates, numbers out of numeric's range,
-- nesting deeper than 128 levels, invalid UTF-8, integers beyond their column) visibly, and says so:
-- `storage_repairs` names the repairs of a row; `envelope_raw`, `response_raw` and `content_blobs.raw`
-- keep the original bytes of a JSON value that had to be repaired (NULL when it went in as it came).
ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS envelope_raw bytea;
ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS response_raw bytea;
ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS storage_repairs text[];
ALTER TABLE content_blobs ADD COLUMN IF NOT EXISTS raw bytea;

-- Rows PostgreSQL refused even in their last-resort form, exactly as encoded (one COPY BINARY tuple of
-- `column_count` fields), with the error: `nexus storage quarantine` lists and retries them.
CREATE TABLE IF NOT EXISTS storage_quarantine (
    id             bigserial   PRIMARY KEY,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    table_name     text        NOT NULL,
    column_count   int         NOT NULL,
    request_id     uuid,
    row_data       bytea       NOT NULL,
    sqlstate       text,
    error          text        NOT NULL,
    retries        int         NOT NULL DEFAULT 0,
    last_retry_at  timestamptz
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_writer') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON storage_quarantine TO nexus_writer;
        GRANT USAGE ON SEQUENCE storage_quarantine_id_seq TO nexus_writer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_reader') THEN
        GRANT SELECT ON storage_quarantine TO nexus_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'no right to grant on storage_quarantine; skipping';
END $$;
