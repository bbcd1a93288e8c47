"""llmdr.serving."""
