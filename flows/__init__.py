"""The Prefect DAGs: which stage runs after which, caching, retries, artifacts. Thin by design."""
