"""llmdr.testing."""
