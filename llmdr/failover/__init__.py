"""llmdr.failover."""
