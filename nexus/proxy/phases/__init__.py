"""The life of one proxied request, in named phases, each a small module with one job.

`ProxyApp._forward` (nexus/proxy/app.py) runs them in this order, handing one `Exchange` (`exchange`)
from each to the next:

1. `admit`: every check before anything goes upstream (origin, method, target, header selectors,
   the client's key, the analysis mark, the body and its one pass through Rust). A refusal is answered
   in Anthropic's error shape and stored with its reason (`record.refusal_record`).
2. `credential`: which project pays and with which upstream headers (a throttled client-key check),
   and the OAuth refresh when the upstream refuses a held token.
3. `link`: the request's place in its conversation (or none, for the analysis worker's requests).
4. `forward`: the upstream opened within the server limit, with retries and one OAuth replay; and
   what the client gets when forwarding fails (timeout, refusal, the client gone, shutdown).
5. `relay`: the answer sent back as it arrives, then the per-worker counters.
6. `record`: token counters, the stored row (after its link settles), the integrations; metrics and
   the trace are read from the same `Exchange` by `ProxyApp._observe`.
"""
