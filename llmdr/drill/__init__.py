"""llmdr.drill."""
