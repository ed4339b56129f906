"""Spark on the dashboard: a recommendation stored in a request's tool results is shown on the request
page, and feedback on it goes to a local fake Spark API with the bearer key (a real dashboard process,
a real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit

import orjson
import psycopg
import pytest

from tests.harness.servers import run_dashboard
from tests.receiver import Receiver, run_receiver
from tests.test_dashboard import call
from tests.usage_rows import insert_row

SPARK_KEY = "spark-api-key-0123456789"
RECOMMENDATION = """## Use a connection pool
Pool connections with [psycopg_pool](https://www.psycopg.org/psycopg3/docs/advanced/pool.html).
<script>alert("xss")</script>

## Watch the timeouts
Set `statement_timeout`.
"""


@pytest.fixture
def spark_request(migrated_db: str) -> str:
    result = orjson.dumps({"session_id": "sess-42", "response": RECOMMENDATION}).decode()
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "how do I pool connections?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_spark",
                        "name": "mcp__spark__get_recommendation",
                        "input": {"query": "pooling in psycopg", "context": "a FastAPI service"},
                    }
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_spark", "content": result}]},
        ],
    }
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        return insert_row(conn, datetime.now(UTC) - timedelta(minutes=1), project="alpha", request_body=body)


@pytest.fixture
def fake_spark() -> Iterator[Receiver]:
    with run_receiver() as receiver:
        receiver.answers["/send_feedback"] = (200, b'{"status": "ok"}')
        yield receiver


@pytest.fixture
def spark_dashboard(migrated_db: str, fake_spark: Receiver) -> Iterator[str]:
    env = {"DATABASE_URL": migrated_db, "SPARK_API_URL": fake_spark.url, "SPARK_API_KEY": SPARK_KEY}
    with run_dashboard(env) as url:
        yield url


def form(**fields: str) -> str:
    return urlencode(fields)


def test_the_recommendation_is_shown_and_feedback_reaches_spark(
    spark_dashboard: str, spark_request: str, fake_spark: Receiver
) -> None:
    page = call(spark_dashboard, f"/requests/{spark_request}")
    assert page.status == 200
    assert "Spark recommendations" in page.text
    assert "pooling in psycopg" in page.text and "a FastAPI service" in page.text and "sess-42" in page.text
    assert "Use a connection pool" in page.text and "Watch the timeouts" in page.text
    assert "https://www.psycopg.org/psycopg3/docs/advanced/pool.html" in page.text
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text  # shown as text only
    assert 'action="/requests/' + spark_request + '/spark-feedback"' in page.text

    host = urlsplit(spark_dashboard).netloc
    posted = call(
        spark_dashboard,
        f"/requests/{spark_request}/spark-feedback",
        "POST",
        form(
            session_id="sess-42",
            rating="4",
            comments="pooling fixed it",
            **{"section:use-a-connection-pool": "spot on", "section:not-a-section": "ignored"},
            source_url_1="https://www.psycopg.org/psycopg3/docs/advanced/pool.html",
            source_feedback_1="the right page",
            source_url_2="https://evil.example/not-a-source",
            source_feedback_2="ignored",
        ),
        origin=f"http://{host}",
        sec_fetch_site="same-origin",
    )
    assert posted.status == 303
    assert posted.header("location") == f"/requests/{spark_request}?spark=sent#spark"
    (sent,) = fake_spark.on("/send_feedback")
    assert sent.headers["authorization"] == f"Bearer {SPARK_KEY}"
    assert sent.json() == {
        "session_id": "sess-42",
        "feedback": {
            "recommendation_feedback": {
                "overall_feedback": {"rating": 4, "comments": "pooling fixed it"},
                "section_feedbacks": [{"section_id": "use-a-connection-pool", "feedback": "spot on"}],
            },
            "source_feedbacks": [
                {"source_url": "https://www.psycopg.org/psycopg3/docs/advanced/pool.html", "feedback": "the right page"}
            ],
        },
    }
    after = call(spark_dashboard, f"/requests/{spark_request}?spark=sent")
    assert "Feedback sent to Spark." in after.text


def test_feedback_that_is_not_for_this_request_or_not_same_site_is_refused(
    spark_dashboard: str, spark_request: str, fake_spark: Receiver
) -> None:
    path = f"/requests/{spark_request}/spark-feedback"
    unknown = call(spark_dashboard, path, "POST", form(session_id="sess-other", rating="5"))
    assert unknown.status == 400
    bad_rating = call(spark_dashboard, path, "POST", form(session_id="sess-42", rating="9"))
    assert bad_rating.status == 400 and "rating must be" in bad_rating.text
    cross_site = call(
        spark_dashboard, path, "POST", form(session_id="sess-42", rating="5"), sec_fetch_site="cross-site"
    )
    assert cross_site.status == 403
    other_origin = call(
        spark_dashboard, path, "POST", form(session_id="sess-42", rating="5"), origin="http://evil.test"
    )
    assert other_origin.status == 403
    assert fake_spark.on("/send_feedback") == []  # nothing was relayed
    fake_spark.answers["/send_feedback"] = (500, b'{"detail": "database down"}')
    failed = call(spark_dashboard, path, "POST", form(session_id="sess-42", rating="5"))
    assert failed.status == 502 and "Spark API answered 500: database down" in failed.text


def test_without_a_key_the_page_says_so_and_nothing_is_sent(migrated_db: str, spark_request: str) -> None:
    with run_dashboard({"DATABASE_URL": migrated_db, "SPARK_API_KEY": ""}) as url:
        page = call(url, f"/requests/{spark_request}")
        assert "Spark recommendations" in page.text and "Feedback needs SPARK_API_KEY" in page.text
        refused = call(url, f"/requests/{spark_request}/spark-feedback", "POST", form(session_id="sess-42", rating="5"))
        assert refused.status == 503
