-- usage_hourly: api_requests summed per UTC hour, project, account, model, request type and status
-- class, so usage pages, statistics and filter menus read a few thousand rows, not a million
-- (docs/dashboard.md "Fast at scale"; nexus/usage/hourly.py reads it).
--
-- Kept exact by statement triggers on api_requests: every INSERT (the writer's insert from staging,
-- whose ON CONFLICT DO NOTHING means a replayed or retried batch adds nothing; the importer; a test's
-- own INSERT), UPDATE (repricing sets cost_usd; `nexus relink`) and DELETE adds its rows' deltas in
-- the same statement, so in the same transaction as the rows themselves. Dropping a day's partition
-- (retention) deletes that day's hours in the same transaction (nexus/storage/partitions.py);
-- TRUNCATE of api_requests empties it. The sums are numeric (a sum of clamped bigint counts can
-- exceed bigint), like the queries over api_requests they replace.
CREATE TABLE IF NOT EXISTS usage_hourly (
    hour                            timestamptz NOT NULL,
    project_id                      text        NOT NULL,
    account_id                      text,
    model                           text,
    request_type                    text,
    status                          text        NOT NULL,  -- nexus.usage.repo.STATUS_CLASS
    requests                        bigint      NOT NULL,
    errors                          bigint      NOT NULL,  -- response_status >= 400 OR error IS NOT NULL
    linked_requests                 bigint      NOT NULL,  -- with a conversation_id
    input_tokens                    numeric     NOT NULL,
    output_tokens                   numeric     NOT NULL,
    cache_creation_input_tokens     numeric     NOT NULL,
    cache_read_input_tokens         numeric     NOT NULL,
    cache_creation_5m_input_tokens  numeric     NOT NULL,
    cache_creation_1h_input_tokens  numeric     NOT NULL,
    linked_tokens                   numeric     NOT NULL,  -- input + output of the linked requests
    cost_usd                        numeric     NOT NULL,  -- of the priced requests
    unpriced_requests               bigint      NOT NULL,
    duration_ms                     numeric     NOT NULL,  -- sum over the requests that have one
    timed_requests                  bigint      NOT NULL,
    first_at                        timestamptz,
    last_at                         timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS usage_hourly_key
    ON usage_hourly (hour, project_id, account_id, model, request_type, status) NULLS NOT DISTINCT;
CREATE INDEX IF NOT EXISTS usage_hourly_project_idx ON usage_hourly (project_id, hour);
CREATE INDEX IF NOT EXISTS usage_hourly_account_idx ON usage_hourly (account_id, hour);

-- usage_daily: the same sums per UTC day (no first/last request): the 30-day daily table of /usage and
-- /api/token-usage/daily reads ~21,000 of these instead of ~82,000 hourly rows (~180-260 ms at
-- 1,000,000 stored requests, most of it summing numeric columns).
CREATE TABLE IF NOT EXISTS usage_daily (
    day                             date        NOT NULL,
    project_id                      text        NOT NULL,
    account_id                      text,
    model                           text,
    request_type                    text,
    status                          text        NOT NULL,
    requests                        bigint      NOT NULL,
    errors                          bigint      NOT NULL,
    linked_requests                 bigint      NOT NULL,
    input_tokens                    numeric     NOT NULL,
    output_tokens                   numeric     NOT NULL,
    cache_creation_input_tokens     numeric     NOT NULL,
    cache_read_input_tokens         numeric     NOT NULL,
    cache_creation_5m_input_tokens  numeric     NOT NULL,
    cache_creation_1h_input_tokens  numeric     NOT NULL,
    linked_tokens                   numeric     NOT NULL,
    cost_usd                        numeric     NOT NULL,
    unpriced_requests               bigint      NOT NULL,
    duration_ms                     numeric     NOT NULL,
    timed_requests                  bigint      NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS usage_daily_key
    ON usage_daily (day, project_id, account_id, model, request_type, status) NULLS NOT DISTINCT;

-- usage_keys: which conversations and branches had requests, per UTC day, project and account (the
-- distinct tuples of api_requests). `GET /api/dashboard/stats` counts distinct conversations, users
-- and branches over 30 days from it: ~2 rows per conversation, where a count over api_requests
-- read every request. Kept by the same triggers: a tuple is added with its first row and removed
-- when a DELETE or UPDATE leaves it no row.
CREATE TABLE IF NOT EXISTS usage_keys (
    day             date    NOT NULL,
    project_id      text    NOT NULL,
    account_id      text,
    conversation_id uuid,
    branch_id       text
);
CREATE UNIQUE INDEX IF NOT EXISTS usage_keys_key
    ON usage_keys (day, project_id, account_id, conversation_id, branch_id) NULLS NOT DISTINCT;

CREATE INDEX IF NOT EXISTS usage_keys_account_idx ON usage_keys (account_id, conversation_id);

-- GET /api/oauth-usage/{account}: the newest reply of an account that carried the unified rate-limit
-- headers. Through the account index alone, an account whose replies carry none (an API key, another
-- upstream) had all its requests of the period read (~540 ms at 1,000,000 stored requests).
CREATE INDEX IF NOT EXISTS api_requests_ratelimit_idx ON api_requests (account_id, "timestamp" DESC)
    WHERE response_headers ? 'anthropic-ratelimit-unified-status';

-- One row's contribution, grouped by its key; `sign` is 1 for rows added, -1 for rows taken away.
-- The expressions are those of nexus/usage/hourly.py (ROW_KEYS, ROW_MEASURES); a test checks the
-- table against a fresh aggregate of api_requests.
-- A function returning the statement, not running it: a trigger's transition tables are visible only to
-- statements the trigger function itself runs.
CREATE OR REPLACE FUNCTION nexus_usage_hourly_sql(delta_sql text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
    SELECT format($q$
        INSERT INTO usage_hourly AS u (hour, project_id, account_id, model, request_type, status, requests, errors,
            linked_requests, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
            cache_creation_5m_input_tokens, cache_creation_1h_input_tokens, linked_tokens, cost_usd,
            unpriced_requests, duration_ms, timed_requests, first_at, last_at)
        SELECT date_bin('1 hour', "timestamp", TIMESTAMPTZ '1970-01-01 00:00:00+00'), project_id, account_id, model,
            request_type,
            CASE WHEN response_status IS NULL THEN 'none' WHEN response_status < 300 THEN '2xx'
                 WHEN response_status IN (429, 529) THEN response_status::text
                 WHEN response_status < 500 THEN '4xx' ELSE '5xx' END,
            sum(sign),
            coalesce(sum(sign) FILTER (WHERE response_status >= 400 OR error IS NOT NULL), 0),
            coalesce(sum(sign) FILTER (WHERE conversation_id IS NOT NULL), 0),
            coalesce(sum(sign * input_tokens), 0),
            coalesce(sum(sign * output_tokens), 0),
            coalesce(sum(sign * cache_creation_input_tokens), 0),
            coalesce(sum(sign * cache_read_input_tokens), 0),
            coalesce(sum(sign * CASE WHEN jsonb_typeof(usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens') = 'number' THEN
                CASE WHEN (usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens')::numeric BETWEEN 0 AND 9223372036854775807
                      AND (usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens')::numeric
                          = trunc((usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens')::numeric)
                     THEN trunc((usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens')::numeric) END END), 0),
            coalesce(sum(sign * CASE WHEN jsonb_typeof(usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens') = 'number' THEN
                CASE WHEN (usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens')::numeric BETWEEN 0 AND 9223372036854775807
                      AND (usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens')::numeric
                          = trunc((usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens')::numeric)
                     THEN trunc((usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens')::numeric) END END), 0),
            coalesce(sum(sign * (coalesce(input_tokens, 0)::numeric + coalesce(output_tokens, 0)))
                FILTER (WHERE conversation_id IS NOT NULL), 0),
            coalesce(sum(sign * cost_usd), 0),
            coalesce(sum(sign) FILTER (WHERE cost_usd IS NULL), 0),
            coalesce(sum(sign * duration_ms::numeric), 0),
            coalesce(sum(sign) FILTER (WHERE duration_ms IS NOT NULL), 0),
            min("timestamp") FILTER (WHERE sign > 0),
            max("timestamp") FILTER (WHERE sign > 0)
        FROM (%s) AS d
        GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (hour, project_id, account_id, model, request_type, status) DO UPDATE SET
            requests = u.requests + excluded.requests,
            errors = u.errors + excluded.errors,
            linked_requests = u.linked_requests + excluded.linked_requests,
            input_tokens = u.input_tokens + excluded.input_tokens,
            output_tokens = u.output_tokens + excluded.output_tokens,
            cache_creation_input_tokens = u.cache_creation_input_tokens + excluded.cache_creation_input_tokens,
            cache_read_input_tokens = u.cache_read_input_tokens + excluded.cache_read_input_tokens,
            cache_creation_5m_input_tokens = u.cache_creation_5m_input_tokens + excluded.cache_creation_5m_input_tokens,
            cache_creation_1h_input_tokens = u.cache_creation_1h_input_tokens + excluded.cache_creation_1h_input_tokens,
            linked_tokens = u.linked_tokens + excluded.linked_tokens,
            cost_usd = u.cost_usd + excluded.cost_usd,
            unpriced_requests = u.unpriced_requests + excluded.unpriced_requests,
            duration_ms = u.duration_ms + excluded.duration_ms,
            timed_requests = u.timed_requests + excluded.timed_requests,
            first_at = least(u.first_at, excluded.first_at),
            last_at = greatest(u.last_at, excluded.last_at)
    $q$, delta_sql)
$fn$;

-- The same per UTC day (usage_daily), without first/last: what a month's daily table reads.
CREATE OR REPLACE FUNCTION nexus_usage_daily_sql(delta_sql text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
    SELECT format($q$
        INSERT INTO usage_daily AS u (day, project_id, account_id, model, request_type, status, requests, errors,
            linked_requests, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
            cache_creation_5m_input_tokens, cache_creation_1h_input_tokens, linked_tokens, cost_usd,
            unpriced_requests, duration_ms, timed_requests)
        SELECT ("timestamp" AT TIME ZONE 'UTC')::date, project_id, account_id, model,
            request_type,
            CASE WHEN response_status IS NULL THEN 'none' WHEN response_status < 300 THEN '2xx'
                 WHEN response_status IN (429, 529) THEN response_status::text
                 WHEN response_status < 500 THEN '4xx' ELSE '5xx' END,
            sum(sign),
            coalesce(sum(sign) FILTER (WHERE response_status >= 400 OR error IS NOT NULL), 0),
            coalesce(sum(sign) FILTER (WHERE conversation_id IS NOT NULL), 0),
            coalesce(sum(sign * input_tokens), 0),
            coalesce(sum(sign * output_tokens), 0),
            coalesce(sum(sign * cache_creation_input_tokens), 0),
            coalesce(sum(sign * cache_read_input_tokens), 0),
            coalesce(sum(sign * CASE WHEN jsonb_typeof(usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens') = 'number' THEN
                CASE WHEN (usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens')::numeric BETWEEN 0 AND 9223372036854775807
                      AND (usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens')::numeric
                          = trunc((usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens')::numeric)
                     THEN trunc((usage -> 'cache_creation' -> 'ephemeral_5m_input_tokens')::numeric) END END), 0),
            coalesce(sum(sign * CASE WHEN jsonb_typeof(usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens') = 'number' THEN
                CASE WHEN (usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens')::numeric BETWEEN 0 AND 9223372036854775807
                      AND (usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens')::numeric
                          = trunc((usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens')::numeric)
                     THEN trunc((usage -> 'cache_creation' -> 'ephemeral_1h_input_tokens')::numeric) END END), 0),
            coalesce(sum(sign * (coalesce(input_tokens, 0)::numeric + coalesce(output_tokens, 0)))
                FILTER (WHERE conversation_id IS NOT NULL), 0),
            coalesce(sum(sign * cost_usd), 0),
            coalesce(sum(sign) FILTER (WHERE cost_usd IS NULL), 0),
            coalesce(sum(sign * duration_ms::numeric), 0),
            coalesce(sum(sign) FILTER (WHERE duration_ms IS NOT NULL), 0)
        FROM (%s) AS d
        GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (day, project_id, account_id, model, request_type, status) DO UPDATE SET
            requests = u.requests + excluded.requests,
            errors = u.errors + excluded.errors,
            linked_requests = u.linked_requests + excluded.linked_requests,
            input_tokens = u.input_tokens + excluded.input_tokens,
            output_tokens = u.output_tokens + excluded.output_tokens,
            cache_creation_input_tokens = u.cache_creation_input_tokens + excluded.cache_creation_input_tokens,
            cache_read_input_tokens = u.cache_read_input_tokens + excluded.cache_read_input_tokens,
            cache_creation_5m_input_tokens = u.cache_creation_5m_input_tokens + excluded.cache_creation_5m_input_tokens,
            cache_creation_1h_input_tokens = u.cache_creation_1h_input_tokens + excluded.cache_creation_1h_input_tokens,
            linked_tokens = u.linked_tokens + excluded.linked_tokens,
            cost_usd = u.cost_usd + excluded.cost_usd,
            unpriced_requests = u.unpriced_requests + excluded.unpriced_requests,
            duration_ms = u.duration_ms + excluded.duration_ms,
            timed_requests = u.timed_requests + excluded.timed_requests
    $q$, delta_sql)
$fn$;

CREATE OR REPLACE FUNCTION nexus_usage_keys_sql(rows_sql text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
    SELECT format($q$
        INSERT INTO usage_keys (day, project_id, account_id, conversation_id, branch_id)
        SELECT DISTINCT ("timestamp" AT TIME ZONE 'UTC')::date, project_id, account_id, conversation_id, branch_id
        FROM (%s) AS d ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (day, project_id, account_id, conversation_id, branch_id) DO NOTHING
    $q$, rows_sql)
$fn$;

-- The tuples of rows taken away that no stored row has any more.
CREATE OR REPLACE FUNCTION nexus_usage_keys_sweep() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM usage_keys k USING nexus_usage_gone g
    WHERE k.day = g.day AND k.project_id = g.project_id AND k.account_id IS NOT DISTINCT FROM g.account_id
      AND k.conversation_id IS NOT DISTINCT FROM g.conversation_id AND k.branch_id IS NOT DISTINCT FROM g.branch_id
      AND NOT EXISTS (
        SELECT 1 FROM api_requests r
        WHERE r."timestamp" >= g.day::timestamp AT TIME ZONE 'UTC'
          AND r."timestamp" < (g.day + 1)::timestamp AT TIME ZONE 'UTC'
          AND r.project_id = g.project_id AND r.account_id IS NOT DISTINCT FROM g.account_id
          AND r.conversation_id IS NOT DISTINCT FROM g.conversation_id AND r.branch_id IS NOT DISTINCT FROM g.branch_id);
    DROP TABLE nexus_usage_gone;
END
$fn$;

-- Rows taken away can leave a key's first_at / last_at wider than what is left: those keys' bounds
-- are read again from api_requests (an hour of one key: the timestamp index), and keys left with no
-- request are deleted. Only DELETE and an UPDATE that moved rows to another key get here.
CREATE OR REPLACE FUNCTION nexus_usage_hourly_shrink() RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM usage_hourly WHERE requests = 0;
    DELETE FROM usage_daily WHERE requests = 0;
    UPDATE usage_hourly u SET first_at = b.first_at, last_at = b.last_at
    FROM nexus_usage_touched t, LATERAL (
        SELECT min(r."timestamp") AS first_at, max(r."timestamp") AS last_at FROM api_requests r
        WHERE r."timestamp" >= t.hour AND r."timestamp" < t.hour + interval '1 hour'
          AND r.project_id = t.project_id AND r.account_id IS NOT DISTINCT FROM t.account_id
          AND r.model IS NOT DISTINCT FROM t.model AND r.request_type IS NOT DISTINCT FROM t.request_type
          AND CASE WHEN r.response_status IS NULL THEN 'none' WHEN r.response_status < 300 THEN '2xx'
                   WHEN r.response_status IN (429, 529) THEN r.response_status::text
                   WHEN r.response_status < 500 THEN '4xx' ELSE '5xx' END = t.status
    ) b
    WHERE u.hour = t.hour AND u.project_id = t.project_id AND u.account_id IS NOT DISTINCT FROM t.account_id
      AND u.model IS NOT DISTINCT FROM t.model AND u.request_type IS NOT DISTINCT FROM t.request_type
      AND u.status = t.status;
    DROP TABLE nexus_usage_touched;
END
$fn$;

-- The writer's path, once per batch: the statements are written into the function's body (not run
-- by EXECUTE) so PL/pgSQL keeps their plans per connection: ~1-2 ms per 500-row batch instead of ~5.
DO $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION nexus_usage_hourly_insert() RETURNS trigger LANGUAGE plpgsql AS %L',
        'BEGIN ' || nexus_usage_hourly_sql('SELECT 1 AS sign, * FROM nexus_new_rows') || '; '
            || nexus_usage_daily_sql('SELECT 1 AS sign, * FROM nexus_new_rows') || '; '
            || nexus_usage_keys_sql('SELECT * FROM nexus_new_rows') || '; RETURN NULL; END');
END
$$;

CREATE OR REPLACE FUNCTION nexus_usage_hourly_update() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE nexus_usage_hourly_sql(
        'SELECT 1 AS sign, * FROM nexus_new_rows UNION ALL SELECT -1 AS sign, * FROM nexus_old_rows');
    EXECUTE nexus_usage_daily_sql(
        'SELECT 1 AS sign, * FROM nexus_new_rows UNION ALL SELECT -1 AS sign, * FROM nexus_old_rows');
    -- rows that changed key (or time): their old key's bounds may have shrunk
    CREATE TEMP TABLE nexus_usage_touched ON COMMIT DROP AS
    SELECT DISTINCT date_bin('1 hour', o."timestamp", TIMESTAMPTZ '1970-01-01 00:00:00+00') AS hour, o.project_id,
        o.account_id, o.model, o.request_type,
        CASE WHEN o.response_status IS NULL THEN 'none' WHEN o.response_status < 300 THEN '2xx'
             WHEN o.response_status IN (429, 529) THEN o.response_status::text
             WHEN o.response_status < 500 THEN '4xx' ELSE '5xx' END AS status
    FROM nexus_old_rows o JOIN nexus_new_rows n ON n.request_id = o.request_id
    WHERE (o."timestamp", o.project_id, o.account_id, o.model, o.request_type, o.response_status)
          IS DISTINCT FROM (n."timestamp", n.project_id, n.account_id, n.model, n.request_type, n.response_status);
    PERFORM nexus_usage_hourly_shrink();
    EXECUTE nexus_usage_keys_sql('SELECT * FROM nexus_new_rows');
    CREATE TEMP TABLE nexus_usage_gone ON COMMIT DROP AS
    SELECT DISTINCT (o."timestamp" AT TIME ZONE 'UTC')::date AS day, o.project_id, o.account_id, o.conversation_id,
        o.branch_id
    FROM nexus_old_rows o JOIN nexus_new_rows n ON n.request_id = o.request_id
    WHERE (o."timestamp", o.project_id, o.account_id, o.conversation_id, o.branch_id)
          IS DISTINCT FROM (n."timestamp", n.project_id, n.account_id, n.conversation_id, n.branch_id);
    PERFORM nexus_usage_keys_sweep();
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION nexus_usage_hourly_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE nexus_usage_hourly_sql('SELECT -1 AS sign, * FROM nexus_old_rows');
    EXECUTE nexus_usage_daily_sql('SELECT -1 AS sign, * FROM nexus_old_rows');
    CREATE TEMP TABLE nexus_usage_touched ON COMMIT DROP AS
    SELECT DISTINCT date_bin('1 hour', o."timestamp", TIMESTAMPTZ '1970-01-01 00:00:00+00') AS hour, o.project_id,
        o.account_id, o.model, o.request_type,
        CASE WHEN o.response_status IS NULL THEN 'none' WHEN o.response_status < 300 THEN '2xx'
             WHEN o.response_status IN (429, 529) THEN o.response_status::text
             WHEN o.response_status < 500 THEN '4xx' ELSE '5xx' END AS status
    FROM nexus_old_rows o;
    PERFORM nexus_usage_hourly_shrink();
    CREATE TEMP TABLE nexus_usage_gone ON COMMIT DROP AS
    SELECT DISTINCT (o."timestamp" AT TIME ZONE 'UTC')::date AS day, o.project_id, o.account_id, o.conversation_id,
        o.branch_id
    FROM nexus_old_rows o;
    PERFORM nexus_usage_keys_sweep();
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION nexus_usage_hourly_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE usage_hourly, usage_daily, usage_keys;
    RETURN NULL;
END
$fn$;

-- CREATE TRIGGER locks api_requests against writers until this migration commits, so no row is
-- stored between the backfill below and the triggers taking over.
DROP TRIGGER IF EXISTS nexus_usage_hourly_insert ON api_requests;
DROP TRIGGER IF EXISTS nexus_usage_hourly_update ON api_requests;
DROP TRIGGER IF EXISTS nexus_usage_hourly_delete ON api_requests;
DROP TRIGGER IF EXISTS nexus_usage_hourly_truncate ON api_requests;
CREATE TRIGGER nexus_usage_hourly_insert AFTER INSERT ON api_requests
    REFERENCING NEW TABLE AS nexus_new_rows FOR EACH STATEMENT EXECUTE FUNCTION nexus_usage_hourly_insert();
CREATE TRIGGER nexus_usage_hourly_update AFTER UPDATE ON api_requests
    REFERENCING OLD TABLE AS nexus_old_rows NEW TABLE AS nexus_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION nexus_usage_hourly_update();
CREATE TRIGGER nexus_usage_hourly_delete AFTER DELETE ON api_requests
    REFERENCING OLD TABLE AS nexus_old_rows FOR EACH STATEMENT EXECUTE FUNCTION nexus_usage_hourly_delete();
CREATE TRIGGER nexus_usage_hourly_truncate AFTER TRUNCATE ON api_requests
    FOR EACH STATEMENT EXECUTE FUNCTION nexus_usage_hourly_truncate();

-- Backfill: what is stored already.
TRUNCATE usage_hourly, usage_daily, usage_keys;
DO $$
BEGIN
    EXECUTE nexus_usage_hourly_sql('SELECT 1 AS sign, * FROM api_requests');
    EXECUTE nexus_usage_daily_sql('SELECT 1 AS sign, * FROM api_requests');
    EXECUTE nexus_usage_keys_sql('SELECT * FROM api_requests');
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_writer') THEN
        -- the writer's inserts run the triggers, which write here
        GRANT SELECT, INSERT, UPDATE, DELETE ON usage_hourly, usage_daily, usage_keys TO nexus_writer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_reader') THEN
        GRANT SELECT ON usage_hourly, usage_daily, usage_keys TO nexus_reader;
    END IF;
END
$$;
