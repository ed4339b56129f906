-- One shared linking decision's reads in one call (docs/scaling.md, nexus/conversations/shared.py): the
-- advisory lock on the request's first message (session level, released by the caller once its decision
-- is committed), whether a turn of its session is still in flight (only when asked), and the candidates.
-- VOLATILE, so in READ COMMITTED each statement below takes a new snapshot: the reads, made after the lock
-- was granted, see every decision committed before it was. The in-flight answer, when asked, comes as a
-- first row with no request id and status 1 (in flight) or 0.
CREATE OR REPLACE FUNCTION link_candidates(
    p_key bigint,           -- NULL: the lock is already held (a second, wider read)
    p_hashes bytea[],
    p_mine bytea,
    p_compaction boolean,
    p_project text,
    p_start timestamptz,
    p_end timestamptz,
    p_session text,
    p_agent text,
    p_request uuid,
    p_in_flight_since timestamptz,  -- NULL: not asked
    p_in_flight_until timestamptz
) RETURNS TABLE (
    o_request_id text, o_project_id text, o_timestamp timestamptz, o_request_type text, o_hash bytea,
    o_conversation_id text, o_branch_id text, o_parent_request_id text, o_is_subtask boolean,
    o_parent_task_request_id text, o_session_id text, o_agent_id text, o_status smallint
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_key IS NOT NULL THEN
        PERFORM pg_advisory_lock(p_key);
    END IF;
    IF p_in_flight_since IS NOT NULL THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::timestamptz, NULL::text, NULL::bytea, NULL::text, NULL::text,
            NULL::text, false, NULL::text, NULL::text, NULL::text,
            (EXISTS (SELECT 1 FROM link_requests l WHERE l.project_id = p_project
                AND l.session_id IS NOT DISTINCT FROM p_session AND l.status = 0
                AND l.request_type IN ('main', 'compaction') AND l."timestamp" >= p_in_flight_since
                AND l."timestamp" <= p_in_flight_until AND l.request_id <> p_request))::int::smallint;
    END IF;
    -- As repository.REQUESTS_WITH_HASHES: per hash the newest rows, of which the newest few overall and
    -- of the request's session and agent; then, for the nearest proper prefix that has any (the parent),
    -- a child with a smaller and one with a larger history hash than this request's.
    RETURN QUERY
    WITH c AS (
        SELECT * FROM (
            SELECT r.*, h.depth,
                row_number() OVER (PARTITION BY h.depth ORDER BY r."timestamp" DESC) AS newest,
                row_number() OVER (PARTITION BY h.depth, r.session_id IS NOT DISTINCT FROM p_session,
                    r.agent_id IS NOT DISTINCT FROM p_agent ORDER BY r."timestamp" DESC) AS in_group
            FROM unnest(p_hashes) WITH ORDINALITY AS h(hash, depth)
            CROSS JOIN LATERAL (
                SELECT * FROM link_requests l
                WHERE l.current_message_hash = h.hash AND l.project_id = p_project
                    AND l."timestamp" >= p_start AND l."timestamp" <= p_end
                ORDER BY l."timestamp" DESC LIMIT 32
            ) r
        ) ranked
        WHERE newest <= 4
            OR (in_group <= 4 AND (ranked.session_id IS NOT DISTINCT FROM p_session
                OR ranked.agent_id IS NOT DISTINCT FROM p_agent))
        ORDER BY depth DESC, "timestamp" DESC LIMIT 64
    ), parents AS (
        SELECT DISTINCT c.request_id AS parent FROM c
        WHERE c.depth = (SELECT max(c2.depth) FROM c c2 WHERE c2.depth < cardinality(p_hashes))
    )
    SELECT c.request_id::text, c.project_id, c."timestamp", c.request_type, c.current_message_hash,
        c.conversation_id::text, c.branch_id, c.parent_request_id::text, c.is_subtask,
        c.parent_task_request_id::text, c.session_id, c.agent_id, c.status
    FROM c
    UNION ALL
    SELECT k.request_id::text, k.project_id, k."timestamp", k.request_type, k.current_message_hash,
        k.conversation_id::text, k.branch_id, k.parent_request_id::text, k.is_subtask,
        k.parent_task_request_id::text, k.session_id, k.agent_id, k.status
    FROM parents p CROSS JOIN LATERAL (
        (SELECT * FROM link_requests k1 WHERE k1.parent_request_id = p.parent AND k1.current_message_hash < p_mine
            AND k1.parent_task_request_id IS DISTINCT FROM p.parent
            AND NOT (p_compaction AND k1.request_type = 'compaction')
            ORDER BY k1.current_message_hash LIMIT 1)
        UNION ALL
        (SELECT * FROM link_requests k2 WHERE k2.parent_request_id = p.parent AND k2.current_message_hash > p_mine
            AND k2.parent_task_request_id IS DISTINCT FROM p.parent
            AND NOT (p_compaction AND k2.request_type = 'compaction')
            ORDER BY k2.current_message_hash DESC LIMIT 1)
    ) k;
END
$$;
