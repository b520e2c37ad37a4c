"""Planning a run: work items cut into shards, the pooled estimate, cache keys (pure functions)."""
