-- How many times the proxy sent a request upstream (retries after connection errors, 5xx and 529, and
-- the replay after an OAuth refresh): with `outcome`, a 529 that used up every retry is told from one
-- that was answered at once. Requests the proxy refused itself are stored too (`outcome = 'refused'`,
-- `error` the reason), with NULL attempts: nothing went upstream.
ALTER TABLE api_requests ADD COLUMN IF NOT EXISTS attempts int;
