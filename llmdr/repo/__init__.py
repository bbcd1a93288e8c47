"""llmdr.repo."""
