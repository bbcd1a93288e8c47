"""Test support shared by the tests and the benchmarks: the one builder of llmdr configs on local regions
(``config``), free loopback ports (``ports``), file trees (``trees``) and ``requirements.need`` (skip locally, fail
in CI when a real part is missing). Nothing here is imported by llmdr itself."""
