-- Credentials, and client keys, in the database (issue 10): every instance sharing DATABASE_URL serves
-- the same projects and accounts, and an OAuth refresh is single-flight across machines
-- (nexus/auth/db_credentials.py). Files under CREDENTIALS_DIR are imported into these tables.
--
-- `sealed` holds the whole credential document (the file's JSON, tokens and all) encrypted with
-- NEXUS_SECRET_KEY (Fernet, nexus/auth/sealing.py); `key_id` names which key sealed it (a digest
-- prefix, not the key). Nothing secret is stored in clear: the other columns are what `nexus oauth
-- status` shows. `version` grows by one on every change; a refresh happens under an advisory lock on
-- the row's key and commits the rotated tokens before anyone uses them.
CREATE TABLE IF NOT EXISTS credentials (
    kind text NOT NULL CHECK (kind IN ('project', 'account')),
    name text NOT NULL,
    type text NOT NULL CHECK (type IN ('api_key', 'oauth')),
    account_id text NOT NULL,
    sealed bytea NOT NULL,
    key_id text NOT NULL,
    expires_at_ms bigint,
    version bigint NOT NULL DEFAULT 1,
    source text,
    refresh_fingerprint text,
    last_refresh_at timestamptz,
    last_login_at timestamptz,
    failed_at timestamptz,
    last_error text,
    needs_login boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

-- Client keys issued by `nexus keys create`: salted digests only (HMAC-SHA256 with API_KEY_SALT), as
-- the files under CREDENTIALS_DIR/client-keys/ were.
CREATE TABLE IF NOT EXISTS client_keys (
    key_id text PRIMARY KEY,
    digest text NOT NULL,
    project text NOT NULL,
    name text,
    preview text NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision,
    revoked_at double precision
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_writer') THEN
        GRANT SELECT, INSERT, UPDATE ON credentials, client_keys TO nexus_writer;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'no right to grant on credentials; grant them to the proxy role yourself';
END $$;
