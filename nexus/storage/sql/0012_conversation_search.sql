-- Conversations you can find (issue 11): a title per conversation, and full-text search over what was
-- asked and answered. Both are computed by the batch writer in the statement that inserts the rows
-- (nexus/storage/payload.py), from the staged row and the content parts it has just stored: nothing is
-- parsed at query time. Rows stored before this migration are filled here, once (see the end).

-- The text a person wrote or read in a message's `content` (a string, or the `text` blocks of a block
-- list), without what the client injects: `<system-reminder>` blocks, slash-command wrappers and local
-- command output, task notifications, hook output. Tool calls, tool results and thinking are left out.
-- A body is hostile: whatever the JSON holds, this never fails (anything unexpected is no text), and
-- its work is bounded (the first 100 blocks, 20,000 characters of each, 50,000 in all).
CREATE OR REPLACE FUNCTION nexus_visible_text(content jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    txt text;
    tag text;
BEGIN
    IF jsonb_typeof(content) = 'string' THEN
        txt := left(content #>> '{}', 50000);
    ELSIF jsonb_typeof(content) = 'array' THEN
        SELECT string_agg(left(b ->> 'text', 20000), E'\n' ORDER BY i) INTO txt
        FROM jsonb_array_elements(content) WITH ORDINALITY AS e(b, i)
        WHERE i <= 100 AND jsonb_typeof(b) = 'object' AND b ->> 'type' = 'text'
          AND jsonb_typeof(b -> 'text') = 'string';
    END IF;
    IF txt IS NULL THEN
        RETURN '';
    END IF;
    txt := left(txt, 50000);
    FOREACH tag IN ARRAY ARRAY['system-reminder', 'command-name', 'command-message', 'command-args',
                               'local-command-stdout', 'local-command-stderr', 'local-command-caveat',
                               'task-notification', 'bash-input', 'bash-stdout', 'bash-stderr',
                               'user-prompt-submit-hook'] LOOP
        IF strpos(txt, '<' || tag || '>') > 0 THEN
            txt := regexp_replace(txt, '<' || tag || '>.*?</' || tag || '>', ' ', 'g');
            txt := regexp_replace(txt, '<' || tag || '>.*$', ' ');  -- one left open (cut) ends the text
        END IF;
    END LOOP;
    RETURN btrim(txt, E' \t\r\n');
END $$;

-- A conversation's title: the first user message of its first request that has text of its own once
-- the injections are gone, on one line, cut to 120 characters. NULL when there is none (a conversation
-- of tool results only); the writer then tries the conversation's next batch.
CREATE OR REPLACE FUNCTION nexus_title(keys bytea[]) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN length(t) > 120 THEN left(t, 119) || '…' ELSE t END
    FROM (
        SELECT btrim(regexp_replace(nexus_visible_text(b.body -> 'content'), '\s+', ' ', 'g')) AS t, k.i
        FROM unnest(keys[1:12]) WITH ORDINALITY AS k(key, i)
        JOIN content_blobs b ON b.key = k.key
        WHERE b.body ->> 'role' = 'user'
    ) m
    WHERE t <> '' AND t NOT LIKE 'This session is being continued from a previous conversation%'
    ORDER BY i
    LIMIT 1
$$;

-- What a request is found by: its newest user message (the prompt, or nothing for a turn of tool
-- results) and the text of its reply, in the `english` configuration (stemmed: "files" finds "file").
-- The "prompt" of a compaction or an auxiliary request (title generation, quota) is the client's own
-- boilerplate, so only their reply counts. Queries must use the same configuration
-- (nexus/conversations/search.py).
CREATE OR REPLACE FUNCTION nexus_search_vector(keys bytea[], reply jsonb, request_type text) RETURNS tsvector
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_tsvector('english'::regconfig, left(
        coalesce((
            SELECT nexus_visible_text(b.body -> 'content')
            FROM unnest(keys[greatest(1, coalesce(array_length(keys, 1), 0) - 3):]) WITH ORDINALITY AS k(key, i)
            JOIN content_blobs b ON b.key = k.key
            WHERE b.body ->> 'role' = 'user' AND request_type IS DISTINCT FROM 'compaction'
              AND request_type IS DISTINCT FROM 'auxiliary'
            ORDER BY k.i DESC
            LIMIT 1
        ), '') || E'\n' || nexus_visible_text(reply -> 'content'),
        100000))
$$;

ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS search_vector tsvector;
-- Search: `search_vector @@ websearch_to_tsquery('english', q)` (one GIN index per daily partition).
CREATE INDEX IF NOT EXISTS api_requests_search_idx ON api_requests USING gin (search_vector);
-- The requests list's "errors only" filter, newest first.
CREATE INDEX IF NOT EXISTS api_requests_errors_idx ON api_requests ("timestamp" DESC, request_id DESC)
    WHERE response_status >= 400 OR error IS NOT NULL;

ALTER TABLE conversations ADD COLUMN IF NOT EXISTS title text;

-- Rows stored before this migration, filled once, here: the titles (one short lookup per conversation)
-- and the search vectors (one pass over the stored requests; on a database of millions of rows, run
-- `nexus migrate` at a quiet hour: the writer's inserts wait for it, in the spool if need be).
UPDATE conversations c SET title = (
    SELECT nexus_title(r.message_keys) FROM api_requests r
    WHERE r.conversation_id = c.conversation_id AND r."timestamp" >= c.first_at AND r."timestamp" <= c.last_at
    ORDER BY r.is_subtask, r.request_type IS DISTINCT FROM 'main', r."timestamp", r.request_id
    LIMIT 1
) WHERE c.title IS NULL;
UPDATE api_requests SET search_vector = nexus_search_vector(message_keys, response_body, request_type) WHERE search_vector IS NULL;
