"""`python -m llmdr`: the same entry point as the `llmdr` command (and `python -m llmdr.cli`)."""

from llmdr.cli import main

main()
