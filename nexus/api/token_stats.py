"""`GET /token-stats`: the per-project counters of this worker process, in the reference's fields.

Served by the proxy itself (it reads the worker's in-memory `TokenCounters`, not the database), but
declared here with the rest of the contract so `/openapi.json` describes it and its parameters are
checked the same way: `projectId` (the reference's older `domain` too) picks one project, whose
counters are `null` until this worker has served it; without it every project's are returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nexus.api import schemas
from nexus.api.contract import Operation, Param, declare
from nexus.api.params import Query


def _schema(ref: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    one = ref(schemas.TokenStats)
    return {"anyOf": [{"type": "object", "additionalProperties": one}, one, {"type": "null"}]}


TOKEN_STATS = declare(
    Operation(
        "/token-stats",
        "tokenStats",
        "Token counters of this worker process since it started, per project",
        schemas.TokenStats,
        (Param("projectId", "text", "Only this project.", aliases=("project_id", "domain", "trainId")),),
        reference="GET /token-stats?projectId (OLD: ?domain=)",
        description=(
            "Counters of the worker that answered (`X-Nexus-Worker-PID`) since `X-Nexus-Stats-Since`: a map "
            "project -> counters, or one project's counters (`null` if this worker has not served it)."
        ),
        proxy_route=True,
        response_schema=_schema,
        schema_types=(schemas.TokenStats,),
    )
)


def project_of(query: Query) -> str | None:
    """The project asked for; an unknown, repeated or conflicting parameter is a 400."""
    project: str | None = TOKEN_STATS.read_args(query)["projectId"]
    return project
