-- A writer role for the proxy (insert and read back) and a read-only role for the dashboard.
-- Created only where the migrating user may create roles; grant them to login roles yourself:
--   GRANT nexus_writer TO proxy_login;  GRANT nexus_reader TO dashboard_login;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_writer') THEN
        CREATE ROLE nexus_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_reader') THEN
        CREATE ROLE nexus_reader NOLOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO nexus_writer, nexus_reader', current_schema());
    GRANT SELECT, INSERT ON api_requests, content_blobs TO nexus_writer;
    GRANT SELECT ON api_requests, content_blobs TO nexus_reader;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'no right to create roles; skipping nexus_writer / nexus_reader';
END $$;
