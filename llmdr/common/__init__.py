"""llmdr.common."""
