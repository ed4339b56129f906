"""`nexus import-reference` throughput: a reference-shaped database of N copies of the recorded Claude Code
traffic (tests/fixtures/claude_code, ~50 stored exchanges of ~45 KB per copy, each copy its own projects
and an hour later), imported into a migrated Nexus database; the import and its relink timed apart.

    python -m bench.import_reference [--copies 40] [--batch-size 100]

Uses NEXUS_TEST_DATABASE_URL when set, else a throwaway embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from unittest import mock

import psycopg

from nexus.conversations import relink as relink_module
from nexus.conversations.replay import load_recording
from nexus.importing.run import import_reference
from nexus.storage.embedded import start_embedded
from tests import reference_db
from tests.conftest import with_database


def build(dsn: str, copies: int) -> int:
    recordings = {s: load_recording(reference_db.TRAFFIC / s) for s in reference_db.SCENARIOS}
    rows = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(reference_db.SCHEMA.read_text())  # type: ignore[arg-type]
        for copy in range(copies):
            with conn.transaction():
                for scenario, recording in recordings.items():
                    conversation = str(uuid.uuid4())
                    for rec in recording:
                        if reference_db.stored_by_reference(rec):
                            project = f"{scenario}-{copy}"
                            reference_db.insert_request(
                                conn, str(uuid.uuid4()), project, rec, conversation, copy * 3600
                            )
                            rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    data_dir, stop = None, None
    admin = os.environ.get("NEXUS_TEST_DATABASE_URL")
    if not admin:
        data_dir = Path(tempfile.mkdtemp(prefix="nexus-bench-pg-"))
        admin, stop = start_embedded(data_dir, database="postgres")
    names = [f"bench_ref_{uuid.uuid4().hex[:8]}", f"bench_nexus_{uuid.uuid4().hex[:8]}"]
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
        source, target = (with_database(admin, n) for n in names)
        rows = build(source, args.copies)
        relink_s = [0.0]
        real = relink_module.relink

        async def timed(*a: object, **k: object) -> object:
            started = time.perf_counter()
            try:
                return await real(*a, **k)  # type: ignore[arg-type]
            finally:
                relink_s[0] = time.perf_counter() - started

        started = time.perf_counter()
        with mock.patch.object(relink_module, "relink", timed):
            report = import_reference(source, target, batch_size=args.batch_size, progress=False)
        total = time.perf_counter() - started
        copy_s = total - relink_s[0]
        with psycopg.connect(target) as conn:
            size = conn.execute(
                "SELECT pg_total_relation_size('content_blobs') + "
                "(SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'api_requests'::regclass)"
            ).fetchone()
        with psycopg.connect(source) as conn:
            ref_size = conn.execute("SELECT pg_total_relation_size('api_requests')").fetchone()
        print(f"reference rows: {rows} ({(ref_size or [0])[0] / 1e6:.1f} MB in api_requests)")
        print(f"imported {report.imported}, skipped {report.skipped}, failed {len(report.failed)}")
        print(
            f"copy: {copy_s:.1f} s ({report.imported / copy_s:.0f} rows/s); relink: {relink_s[0]:.1f} s "
            f"({report.imported / max(relink_s[0], 1e-9):.0f} rows/s); total {total:.1f} s"
        )
        print(f"Nexus storage for them: {float((size or [0])[0] or 0) / 1e6:.1f} MB (bodies content-addressed)")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if stop is not None:
            stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
