-- Rows written since a moment: the dashboard's live feed asks every second for requests stored after
-- the last one it pushed. Rows land in write order, so created_at rises along each partition's heap and
-- a BRIN index finds the newest pages at almost no cost per insert (a btree would add a real one).
-- autosummarize keeps the summary current as pages fill, so only the last few ranges are ever unsummarized.
CREATE INDEX IF NOT EXISTS api_requests_created_brin ON api_requests USING brin (created_at)
    WITH (pages_per_range = 16, autosummarize = on);
