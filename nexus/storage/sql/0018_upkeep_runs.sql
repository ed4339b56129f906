-- When the batch writer's hourly upkeep (nexus/storage/partitions.py `upkeep`: partitions, retention,
-- the shared linking tables' window) was last done against this database, per configuration: every
-- worker of every machine schedules it, and one that finds it done within the period skips it, so it
-- runs about once an hour per database, not once per worker. Written under the upkeep's advisory lock.
CREATE TABLE IF NOT EXISTS nexus_upkeep (
    name    text        PRIMARY KEY,  -- the upkeep and its settings, e.g. 'hourly retention=30 links=30'
    done_at timestamptz NOT NULL
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_writer') THEN
        GRANT SELECT, INSERT, UPDATE ON nexus_upkeep TO nexus_writer;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'no right to grant on nexus_upkeep; grant it to the proxy role yourself';
END $$;
