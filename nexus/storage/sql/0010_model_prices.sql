-- Model prices with effective dates. Rows are written at start-up from the shipped table and
-- PRICING_FILE (nexus/pricing/sync.py); each request's cost is computed once, by the one expression in
-- nexus/pricing/sql.py, and every cost Nexus shows (a conversation, a day, an account) sums those.
CREATE TABLE IF NOT EXISTS model_prices (
    model              text        NOT NULL,  -- a model key: see nexus_model_key
    effective_from     timestamptz NOT NULL,
    input              numeric     NOT NULL,  -- USD per million tokens
    output             numeric     NOT NULL,
    cache_read         numeric     NOT NULL,
    cache_write_5m     numeric     NOT NULL,
    cache_write_1h     numeric     NOT NULL,
    lc_above           bigint,                -- long context: these rates replace all the others
    lc_input           numeric,               -- for a request whose whole input is above lc_above
    lc_output          numeric,
    lc_cache_read      numeric,
    lc_cache_write_5m  numeric,
    lc_cache_write_1h  numeric,
    note               text,
    source             text        NOT NULL,
    PRIMARY KEY (model, effective_from)
);

-- The price key of a model id: lower case, without a provider prefix (`anthropic.`, `us.anthropic.`),
-- a Bedrock version (`-v1:0`), a Vertex date (`@20250929`), a variant tag (`[1m]`) or a date suffix
-- (`-20250929`, `-latest`). `claude-opus-4-9` stays `claude-opus-4-9`: an unknown model is never
-- priced as a neighbour.
CREATE OR REPLACE FUNCTION nexus_model_key(model text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
        lower(model),
        '^([a-z]{2,4}\.)?anthropic\.', ''),  -- Bedrock: anthropic.claude-..., us.anthropic.claude-...
        '\[[^]]*\]$', ''),                  -- a variant tag: claude-sonnet-4-5[1m]
        '@[^@]*$', ''),                      -- Vertex: claude-sonnet-4-5@20250929
        '-v[0-9]+(:[0-9]+)?$', ''),          -- Bedrock version: ...-v1:0
        '-([0-9]{8}|latest)$', '')           -- date suffix: claude-sonnet-4-5-20250929
$$;

-- What each request cost in USD, written with the row (nexus/pricing/sql.py holds the expression)
-- at the price in effect when it was served; NULL while its model has no price. Rows stored before
-- this migration, and rows of a model priced later, are priced at the next start (the partial index
-- finds them without reading the rest).
ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS cost_usd numeric;
CREATE INDEX IF NOT EXISTS api_requests_unpriced_idx ON api_requests ("timestamp") WHERE cost_usd IS NULL;

-- Each price with the end of its period (the start of the next price of the same model), under names
-- that cannot clash with api_requests' columns: the writer joins it to each new row on the model key
-- and the request's time.
CREATE OR REPLACE VIEW model_price_periods AS
SELECT model AS price_model,
       effective_from AS price_from,
       coalesce(lead(effective_from) OVER (PARTITION BY model ORDER BY effective_from), 'infinity') AS price_to,
       input AS p_input, output AS p_output, cache_read AS p_cache_read,
       cache_write_5m AS p_cache_write_5m, cache_write_1h AS p_cache_write_1h,
       lc_above AS p_lc_above, lc_input AS p_lc_input, lc_output AS p_lc_output, lc_cache_read AS p_lc_cache_read,
       lc_cache_write_5m AS p_lc_cache_write_5m, lc_cache_write_1h AS p_lc_cache_write_1h
FROM model_prices;

DO $$
BEGIN
    GRANT SELECT ON model_prices, model_price_periods TO nexus_reader, nexus_writer;
EXCEPTION WHEN undefined_object OR insufficient_privilege THEN
    RAISE NOTICE 'roles nexus_reader / nexus_writer missing; model_prices not granted';
END $$;
