"""Model prices and what requests cost.

The price table (`prices.toml`, shipped; `PRICING_FILE`, the operator's) is loaded and checked here
(`table`) and written into PostgreSQL's `model_prices` at start-up (`sync`); the writer prices each row
as it stores it with the one cost expression of `sql`, and what must be priced before its row is stored
(a Slack message) uses the same rule in memory (`cost`), checked against the database's by a test.
"""
