"""llmdr.devstack."""
