"""Test doubles for llmdr's own tests (as Kopia's ``internal/blobtesting``): ``faulty`` (a ``BlobStore`` wrapper that
injects scripted or random faults). It may import anything in llmdr; no production module ever imports it, and
nothing in production switches it on: tests wrap stores with it directly or through ``tests/support/faults.py``.
"""
