"""What the gateway tells the outside world about finished requests: Slack messages, telemetry,
sanitised test samples (`hub`), and the Spark recommendation feedback relay (`spark`).

None of it may slow a response or leak a secret: the proxy hands each finished request to
`Integrations.finished`, which only appends a snapshot to bounded in-memory queues (dropping, and
counting, when one is full); background tasks drain them, parse and mask the bodies, and deliver.
"""
