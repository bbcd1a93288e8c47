"""Thin Prefect tasks over ``llmdr.ops``: serialisable arguments in, one core call, a small JSON result out."""
