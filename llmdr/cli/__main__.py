"""`python -m llmdr.cli`: the same entry point as the `llmdr` command."""

from llmdr.cli import main

main()
