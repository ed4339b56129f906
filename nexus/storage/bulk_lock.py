"""The one lock every bulk rewrite of stored requests takes: `nexus relink` and repricing.

Both update many `api_requests` rows in one transaction, in no order of their own (a join decides it),
and their triggers then update the usage summaries. Two of them at once could each hold rows the other
waits for: a deadlock, and PostgreSQL ends one of them after a second of waiting, a whole relink or
repricing lost. Taken first in each such transaction (transaction-scoped, so it is released at commit
or rollback whatever happens), this lock makes them run one after the other. The storage writer does
not take it: it inserts new rows and never updates stored ones, and its lock order is documented in
`nexus.storage.payload` and `nexus.conversations.relink`.
"""

from __future__ import annotations

#: Waits for any other bulk rewrite of stored requests to commit or roll back.
BULK_UPDATE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('nexus-bulk-update', 0))"
