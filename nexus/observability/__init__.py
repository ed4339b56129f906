"""What operators watch: Prometheus metrics (`metrics`), OpenTelemetry traces (`tracing`), structured
logs carrying the request id (`logs`). Each is optional and costs the request path next to nothing."""
