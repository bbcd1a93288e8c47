"""llmdr.integrations."""
