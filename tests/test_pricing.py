"""Prices and costs: the price file's checks, the SQL rule on a real PostgreSQL, and costs in the API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus.pricing.cost import PriceBook, model_key
from nexus.pricing.sql import COST, REPRICE_UNPRICED, price_join
from nexus.pricing.sync import sync_prices
from nexus.pricing.table import PricingError, load, parse, shipped
from nexus.settings import Settings
from nexus.storage.migrate import migrate
from tests.usage_rows import insert_row

NOW = datetime.now(UTC).replace(microsecond=0)

ENTRY = """
[[price]]
models = ["claude-test-1"]
from = "2025-01-01"
input = 2
output = 8
cache_read = 0.2
cache_write_5m = 2.5
cache_write_1h = 4
"""


def _cost(
    conn: psycopg.Connection[Any],
    model: str | None,
    at: datetime,
    i: int | None,
    o: int | None,
    r: int | None,
    w: int | None,
    w5: int | None,
    w1: int | None,
) -> Decimal | None:
    """The cost Nexus computes for one stored request with these counts (the rule as every query uses it)."""
    usage: dict[str, Any] = {"input_tokens": i, "output_tokens": o}
    if w5 is not None or w1 is not None:
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1}
    rid = insert_row(conn, at, model=model or "", input_tokens=0, usage_json=orjson.dumps(usage).decode())
    conn.execute(
        "UPDATE api_requests SET model = %s, input_tokens = %s, output_tokens = %s, cache_read_input_tokens = %s, "
        "cache_creation_input_tokens = %s WHERE request_id = %s",
        (model, i, o, r, w, rid),
    )
    conn.execute(REPRICE_UNPRICED, {"limit": 10**9})
    row = conn.execute("SELECT cost_usd FROM api_requests WHERE request_id = %s", (rid,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@pytest.fixture
def db(migrated_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        yield conn


# --- the price file ---------------------------------------------------------------------------------


def test_shipped_prices_are_absolute_and_cover_current_models() -> None:
    prices = {(p.model, p.effective_from): p for p in shipped()}
    models = {m for m, _ in prices}
    for model in ("claude-opus-4-5", "claude-opus-4-1", "claude-sonnet-4-5", "claude-sonnet-4-6", "claude-haiku-4-5"):
        assert model in models
    sonnet = next(p for (m, _), p in prices.items() if m == "claude-sonnet-4-5")
    # the 1-hour write is its own rate, not the 5-minute one (a 37-49% undercount elsewhere)
    assert (sonnet.input, sonnet.cache_write_5m, sonnet.cache_write_1h) == (Decimal(3), Decimal("3.75"), Decimal(6))
    assert sonnet.long_context is not None and sonnet.long_context.above == 200_000
    # exact decimals, not floats: 0.3 stays 0.3
    assert sonnet.cache_read == Decimal("0.3")


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        (ENTRY.replace("input = 2", "input = -2"), "input = -2"),
        (ENTRY.replace("input = 2", 'input = "two"'), "input"),
        (ENTRY.replace('"2025-01-01"', "2025-01-01T00:00:00"), "time zone"),
        (ENTRY.replace('"claude-test-1"', '"Claude Test"'), "not a model key"),
        (ENTRY.replace('"claude-test-1"', '"claude-test-1-20250101@x"'), "not a model key"),
        (ENTRY.replace("cache_write_1h = 4", "cache_write_1h = 4\nbatch = 1"), "batch"),
        (ENTRY.replace('models = ["claude-test-1"]', "models = []"), "empty"),
        (ENTRY + ENTRY, "listed twice"),
        (ENTRY.replace("output = 8", "output = 1e9"), "output"),
        ("[[price]\n", "not TOML"),
    ],
)
def test_bad_price_files_are_refused_with_the_entry_and_field(text: str, fault: str) -> None:
    with pytest.raises(PricingError) as exc:
        parse(text, "ops.toml")
    assert "ops.toml" in str(exc.value) and fault in str(exc.value)


def test_operator_file_overrides_a_shipped_entry_and_adds_models(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        ENTRY
        + '\n[[price]]\nmodels = ["claude-haiku-4-5"]\nfrom = "2023-01-01"\n'
        + "input = 9\noutput = 9\ncache_read = 9\ncache_write_5m = 9\ncache_write_1h = 9\n"
    )
    merged = {(p.model, p.effective_from): p for p in load(path)}
    start = datetime(2023, 1, 1, tzinfo=UTC)
    assert merged[("claude-haiku-4-5", start)].input == 9
    assert merged[("claude-haiku-4-5", start)].source == str(path)
    assert ("claude-test-1", datetime(2025, 1, 1, tzinfo=UTC)) in merged
    assert len(merged) == len(shipped()) + 1


def test_a_bad_pricing_file_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text(ENTRY.replace("input = 2", "input = -1"))
    with pytest.raises(ValueError, match="input = -1"):
        Settings(pricing_file=bad)
    with pytest.raises(ValueError, match="PRICING_FILE"):
        Settings(pricing_file=tmp_path / "missing.toml")


# --- the rule, in PostgreSQL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
        ("claude-sonnet-4-5[1m]", "claude-sonnet-4-5"),
        ("Claude-Opus-4-1", "claude-opus-4-1"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-opus-4-9", "claude-opus-4-9"),
        ("claude-opus-4", "claude-opus-4"),
    ],
)
def test_model_keys(db: psycopg.Connection[Any], model: str, key: str) -> None:
    assert db.execute("SELECT nexus_model_key(%s)", (model,)).fetchone() == (key,)


def test_cost_of_a_request_prices_each_kind_of_token(db: psycopg.Connection[Any]) -> None:
    # Sonnet 4.5: input 3, output 15, cache read 0.30, 5-minute write 3.75, 1-hour write 6 (USD / MTok)
    cost = _cost(db, "claude-sonnet-4-5-20250929", NOW, 1000, 500, 2000, 3500, 1000, 2000)
    # the 500 cache-write tokens the split does not account for are priced at the 5-minute rate
    expected = (1000 * 3 + 500 * 15 + Decimal("2000") * Decimal("0.3") + 1500 * Decimal("3.75") + 2000 * 6) / 10**6
    assert cost == expected
    # without the split every write is a 5-minute write, as before 1-hour caching existed
    assert _cost(db, "claude-sonnet-4-5", NOW, 0, 0, 0, 1000, None, None) == Decimal("3.75") * 1000 / 10**6


def test_long_context_rates_replace_all_rates_above_the_threshold(db: psycopg.Connection[Any]) -> None:
    at_limit = _cost(db, "claude-sonnet-4-5", NOW, 200_000, 1000, 0, 0, None, None)
    assert at_limit == (200_000 * 3 + 1000 * 15) / Decimal(10**6)
    # cache reads count toward the threshold: 150k + 60k read is a long request, every token repriced
    above = _cost(db, "claude-sonnet-4-5", NOW, 150_000, 1000, 60_000, 0, None, None)
    assert above == (150_000 * 6 + Decimal("22.5") * 1000 + Decimal("0.6") * 60_000) / 10**6
    # a model without long-context rates keeps its rates
    assert _cost(db, "claude-opus-4-5", NOW, 300_000, 0, 0, 0, None, None) == Decimal(300_000 * 5) / 10**6


def test_a_request_keeps_the_price_of_the_day_it_was_served(db: psycopg.Connection[Any]) -> None:
    change = datetime(2026, 9, 1, tzinfo=UTC)
    before = _cost(db, "claude-sonnet-5", change - timedelta(seconds=1), 1_000_000, 0, 0, 0, None, None)
    after = _cost(db, "claude-sonnet-5", change, 1_000_000, 0, 0, 0, None, None)
    assert (before, after) == (Decimal(2), Decimal(3))


def test_unknown_models_cost_unknown_never_zero(db: psycopg.Connection[Any]) -> None:
    assert _cost(db, "claude-opus-4-9", NOW, 100, 100, 0, 0, None, None) is None
    assert _cost(db, "gpt-4o", NOW, 100, 0, 0, 0, None, None) is None
    assert _cost(db, None, NOW, 100, 0, 0, 0, None, None) is None
    # a request that used no tokens cost nothing, whatever its model
    assert _cost(db, "gpt-4o", NOW, 0, 0, None, None, None, None) == 0
    # a price that starts after the request does not apply to it
    sync_prices(db, parse(ENTRY, "ops"))
    assert _cost(db, "claude-test-1", datetime(2024, 12, 31, tzinfo=UTC), 100, 0, 0, 0, None, None) is None
    assert _cost(db, "claude-test-1", datetime(2025, 1, 1, tzinfo=UTC), 10**6, 0, 0, 0, None, None) == 2


def test_migrate_writes_the_operators_prices_and_a_restart_replaces_them(
    database_admin_url: str, migrated_db: str, tmp_path: Path
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(ENTRY)
    migrate(migrated_db, path)
    with psycopg.connect(migrated_db) as conn:
        rows = conn.execute("SELECT source FROM model_prices WHERE model = 'claude-test-1'").fetchall()
        assert rows == [(str(path),)]
    migrate(migrated_db, None)  # the entry left the file: it leaves the table
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("SELECT count(*) FROM model_prices WHERE model = 'claude-test-1'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM model_prices").fetchone() == (len(shipped()),)


# --- costs in the API ---------------------------------------------------------------------------------


def test_costs_in_requests_usage_and_conversations(migrated_db: str, tmp_path: Path) -> None:
    import urllib.request

    from tests.harness.servers import run_proxy

    at = NOW - timedelta(minutes=10)
    conv = "0191e7a0-0000-7000-8000-000000000001"
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        known = insert_row(
            conn, at, model="claude-haiku-4-5-20251001", input_tokens=1000, output_tokens=100, conversation=conv
        )
        unknown = insert_row(conn, at + timedelta(seconds=1), model="claude-nova-9", input_tokens=10, conversation=conv)
        insert_row(conn, at + timedelta(seconds=2), project="p2", model="claude-nova-9", input_tokens=10)
        conn.execute(
            "INSERT INTO conversations (conversation_id, project_id, first_at, last_at, request_count) "
            "VALUES (%s, 'p1', %s, %s, 2)",
            (conv, at, at + timedelta(seconds=1)),
        )
        # rows inserted directly are priced as rows stored before pricing existed: at the next start
        assert conn.execute(REPRICE_UNPRICED, {"limit": 10**9}).rowcount == 1
    haiku = (1000 * 1 + 100 * 5) / 10**6

    with run_proxy({"DATABASE_URL": migrated_db, "NEXUS_HOME": str(tmp_path)}) as proxy:

        def get(path: str) -> Any:
            with urllib.request.urlopen(f"{proxy}{path}", timeout=10) as resp:  # noqa: S310 (loopback)
                return orjson.loads(resp.read())

        one, other = get(f"/api/requests/{known}"), get(f"/api/requests/{unknown}")
        p1 = get("/api/token-usage/current?projectId=p1")
        p2 = get("/api/token-usage/current?projectId=p2")
        daily = get("/api/token-usage/daily?projectId=p1")
        convs = get("/api/conversations?projectId=p1")
        tree = get(f"/api/conversations/{conv}")
    assert one["cost_usd"] == pytest.approx(haiku)
    assert other["cost_usd"] is None
    # a partly priced total is a lower bound, and says how many requests it misses
    assert (p1["costUsd"], p1["unpricedRequests"]) == (pytest.approx(haiku), 1)
    # nothing priced: unknown, not zero
    assert (p2["costUsd"], p2["unpricedRequests"]) == (None, 1)
    assert sum(d["costUsd"] or 0 for d in daily["usage"]) == pytest.approx(haiku)
    (listed,) = convs["conversations"]
    assert (listed["cost_usd"], listed["unpriced_requests"]) == (pytest.approx(haiku), 1)
    costs = sorted((r["cost_usd"] is None, r["cost_usd"]) for r in tree["requests"])
    assert costs == [(False, pytest.approx(haiku)), (True, None)]


def test_nexus_pricing_prints_the_table_in_effect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from nexus.cli import main
    from nexus.settings import get_settings

    path = tmp_path / "prices.toml"
    path.write_text(ENTRY)
    monkeypatch.setenv("PRICING_FILE", str(path))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        out = runner.invoke(main, ["pricing", "--json", "--model", "claude-test-1"])
        assert out.exit_code == 0, out.output
        (row,) = orjson.loads(out.output)
        assert (row["input"], row["cacheWrite1h"], row["source"]) == ("2", "4", str(path))
        missing = runner.invoke(main, ["pricing", "--model", "claude-nova-9"])
        assert missing.exit_code == 1 and "unknown" in missing.output
        table = runner.invoke(main, ["pricing"])
        assert "claude-sonnet-4-5" in table.output and ">200000: 6/22.5" in table.output
    finally:
        get_settings.cache_clear()


def test_reprice_applies_a_corrected_past_price(
    migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from nexus.cli import main
    from nexus.settings import get_settings

    at = datetime(2025, 6, 1, 12, tzinfo=UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        rid = insert_row(conn, at, model="claude-test-1", input_tokens=10**6, output_tokens=0)
        assert conn.execute(REPRICE_UNPRICED, {"limit": 10}).rowcount == 0  # no price yet: unknown
    path = tmp_path / "prices.toml"
    path.write_text(ENTRY)
    monkeypatch.setenv("PRICING_FILE", str(path))
    monkeypatch.setenv("DATABASE_URL", migrated_db)
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(main, ["pricing", "reprice", "--unpriced"])
        assert out.exit_code == 0, out.output
        with psycopg.connect(migrated_db) as conn:
            assert conn.execute("SELECT cost_usd FROM api_requests WHERE request_id = %s", (rid,)).fetchone() == (2,)
        path.write_text(ENTRY.replace("input = 2", "input = 2.5"))  # the price was wrong
        get_settings.cache_clear()
        out = CliRunner().invoke(main, ["pricing", "reprice", "--since", "2025-05-01", "--until", "2025-07-01"])
        assert out.exit_code == 0 and "repriced 1 requests" in out.output, out.output
        with psycopg.connect(migrated_db) as conn:
            row = conn.execute("SELECT cost_usd FROM api_requests WHERE request_id = %s", (rid,)).fetchone()
            assert row == (Decimal("2.5"),)
    finally:
        get_settings.cache_clear()


# --- the rule in memory equals the rule in the database -------------------------------------------

_MODELS = st.sampled_from(
    [
        "claude-sonnet-4-5-20250929",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "claude-sonnet-4-5[1m]",
        "claude-sonnet-5",
        "claude-haiku-5-5",
        "Claude-Opus-4-1@20250805",
        "claude-3-7-sonnet-latest",
        "claude-opus-4-9",
        "gpt-4o",
    ]
)
_COUNT = st.one_of(st.none(), st.integers(0, 400_000), st.integers(0, 2**63 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=_MODELS,
    at=st.sampled_from([datetime(2026, 8, 31, 23, 59, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC), NOW]),
    counts=st.tuples(_COUNT, _COUNT, _COUNT, _COUNT, _COUNT, _COUNT),
)
def test_the_rule_in_memory_equals_the_rule_in_the_database(
    db: psycopg.Connection[Any], model: str, at: datetime, counts: tuple[int | None, ...]
) -> None:
    i, o, r, w, w5, w1 = counts
    usage: dict[str, Any] = {}
    if w5 is not None or w1 is not None:
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1}
    sql = (
        f"SELECT {COST}, nexus_model_key(s.model) FROM (SELECT %s::text AS model, %s::timestamptz AS "  # noqa: S608
        '"timestamp", %s::bigint AS input_tokens, %s::bigint AS output_tokens, %s::bigint AS '
        "cache_read_input_tokens, %s::bigint AS cache_creation_input_tokens, %s::jsonb AS usage) AS s "
        f"{price_join('s')}"
    )
    row = db.execute(sql, (model, at, i, o, r, w, orjson.dumps(usage).decode())).fetchone()
    assert row is not None
    assert model_key(model) == row[1]
    in_memory, in_database = PriceBook(shipped()).cost(model, at, i, o, r, w, w5, w1), row[0]
    if in_database is None:
        assert in_memory is None
    else:  # PostgreSQL keeps 16 significant digits of a quotient; Python keeps them all
        assert in_memory is not None
        assert abs(in_memory - in_database) <= max(Decimal("1e-15"), abs(in_database) * Decimal("1e-15"))
