"""The test harness: real processes for tests and benchmarks (``servers``: proxy, dashboard, fake
upstream on free ports, waited for and stopped) and the client of the fake upstream's control endpoints
(``control.FakeControl``). The fake upstream itself is part of the product (``nexus.fake_upstream``)."""
