"""AI analysis of conversations: the queue, the worker, the prompt and the checked result (docs/analysis.md)."""
