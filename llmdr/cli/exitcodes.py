"""The one table of what ``llmdr``'s exit codes mean. ``llmdr --help`` prints it (:func:`epilog`) and
``scripts/gen_reference.py`` writes it into docs/reference/exit-codes.md (:func:`markdown_rows`), with the error
classes and the commands behind each code; the generator fails when an error class or a command uses a code that
is not here, so a new code cannot ship unexplained."""

from __future__ import annotations

# code -> what it means, short enough for one line of `llmdr --help`
EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "failed: storage, integrity or system error (the message says what)",
    2: "usage: bad argument or option, bad config, restore target not empty",
    3: "down: the active region does not answer, or a local region is unhealthy",
    4: "incomplete: a bundle component or a dataset check fails",
    5: "the endpoint's answers differ from the golden set",
    6: "damaged: a chunk, manifest or restore test fails verification",
    7: "failover or failback stopped safely; traffic stays where it was",
    8: "the drill ran and a control failed (its report exists)",
    9: "a readiness check FAILed",
    10: "locked by another llmdr command",
    11: "the region holds an older repository format: run `llmdr migrate`",
    12: "a drill report fails to verify: a file changed, added or removed, or the signature does not match",
    130: "interrupted (Ctrl-C): run the same command again to resume",
}

# codes main() sets itself, whatever the error class or command (the parser's usage errors, Ctrl-C, OSError)
MAIN_CODES = (0, 1, 2, 130)


def epilog() -> str:
    """The table as ``llmdr --help`` shows it below the commands."""
    rows = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())
    return f"Exit codes (details: docs/reference/exit-codes.md):\n{rows}"


def markdown_rows() -> list[str]:
    """The same table in Markdown."""
    return ["| exit | meaning |", "|---:|---|", *(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items())]
