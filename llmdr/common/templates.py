"""Jinja templates that come from a bundle (chat templates, prompt templates): compiled and rendered only inside
Jinja's immutable sandbox, as Hugging Face transformers does for chat templates.

A bundle is data written by whoever trained or packaged the model, not code llmdr trusts: an unsandboxed template
such as ``{{ cycler.__init__.__globals__.os.popen('id').read() }}`` runs commands as the serving user. The sandbox
refuses attribute access to private and internal names (``__class__``, ``__globals__``, ``mro``, frames...) and
calls that modify data in place; it raises ``jinja2.exceptions.SecurityError``, turned here into ``UnsafeTemplate``
naming the template file. The environment has no loader, so ``{% include %}``, ``{% import %}`` and
``{% extends %}`` cannot read any file, inside or outside the bundle.

Not stopped by the sandbox: CPU and memory. A template can loop for a long time (``range`` is capped at 100,000
items per call, but loops nest); whatever renders a bundle's template must run under its own time limit (a replica
is stopped after ``serving.start_timeout``; one request blocks only its own thread).

``unsafe_constructs`` finds the plain patterns (an attribute or item whose name starts with ``_``, an include)
without running anything, so ``llmdr check`` and ``llmdr serve`` refuse such a template up front; spelled
dynamically (``x|attr('__cl' ~ 'ass__')``) the same access is refused by the sandbox when rendered.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from llmdr.errors import UnsafeTemplate


@functools.cache
def _sandbox_class() -> type:
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class StrictSandbox(ImmutableSandboxedEnvironment):
        """Jinja's sandbox answers an unsafe attribute with an undefined value that raises only when used, and
        prints as an empty string: ``{{ self._TemplateReference__context }}`` would render silently. Here every
        unsafe access raises at once."""

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    return StrictSandbox


def sandboxed_environment():
    """A fresh immutable sandboxed Jinja environment with no loader, in which any unsafe access raises
    ``SecurityError`` at once (default delimiters and whitespace rules, so a template renders exactly as it did in a
    plain ``jinja2.Environment``)."""
    return _sandbox_class()()


def unsafe_constructs(text: str, *, includes: bool = True) -> list[str]:
    """What in the template's source reaches for internals (names starting with ``_``) or, with ``includes``, tries
    to load another file; empty when nothing does. Parses only, never renders. A syntax error propagates as
    ``jinja2.TemplateSyntaxError``."""
    from jinja2 import nodes

    ast = sandboxed_environment().parse(text)
    found: list[str] = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Include, nodes.Import,
                              nodes.FromImport, nodes.Extends)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            name = node.args[0].value if isinstance(node.args[0], nodes.Const) else None
        elif includes and isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            what = {"Include": "include", "Import": "import", "FromImport": "from ... import",
                    "Extends": "extends"}[type(node).__name__]
            found.append(f"line {node.lineno}: {{% {what} %}} of another file (bundle templates are rendered on "
                         "their own, nothing is loaded)")
            continue
        if isinstance(name, str) and name.startswith("_"):
            found.append(f"line {node.lineno}: access to the private attribute {name!r}")
    return found


def compile_template(text: str, where: Path | str, *, allow_includes: bool = False):
    """Compile a bundle's template in the sandbox. Raises ``UnsafeTemplate`` naming ``where`` when the source reaches
    for internals (or, unless ``allow_includes``, loads another file) or is not valid Jinja."""
    from jinja2 import TemplateSyntaxError

    try:
        bad = unsafe_constructs(text, includes=not allow_includes)
        if bad:
            raise UnsafeTemplate(f"{where}: the Jinja template is refused: {'; '.join(bad)}. llmdr renders bundle "
                                 "templates in a sandbox and does not run templates that reach for Python internals "
                                 "(a template-injection pattern); fix or replace the template in the bundle")
        return sandboxed_environment().from_string(text)
    except TemplateSyntaxError as exc:
        raise UnsafeTemplate(f"{where}: not a valid Jinja template (line {exc.lineno}: {exc.message}); fix the "
                             "template in the bundle") from None


def render_template(template, where: Path | str, **context: Any) -> str:
    """Render a template compiled by ``compile_template``. What the sandbox refuses at run time (an unsafe attribute
    reached dynamically, an include) becomes ``UnsafeTemplate`` naming ``where``; nothing it refused has run."""
    from jinja2.exceptions import SecurityError

    try:
        return template.render(**context)
    except SecurityError as exc:
        raise UnsafeTemplate(f"{where}: the Jinja sandbox refused the template: {exc} (a template-injection "
                             "pattern; nothing was run); fix or replace the template in the bundle") from None
    except TypeError as exc:
        if "no loader" not in str(exc):
            raise
        raise UnsafeTemplate(f"{where}: the template includes or imports another file; bundle templates are "
                             "rendered on their own and load nothing: inline it") from None
