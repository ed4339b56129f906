"""Model prices and what requests cost.

The price table (`prices.toml`, shipped; `PRICING_FILE`, the operator's) is loaded and checked here
(`table`), written into PostgreSQL's `model_prices` at start-up (`sync`), and every cost is computed in
the database by one SQL function, `nexus_request_cost` (migration 0010), so a request, a conversation,
a day or an account are priced by the same rule at the price in effect when each request was served.
"""
