"""llmdr.lineage."""
