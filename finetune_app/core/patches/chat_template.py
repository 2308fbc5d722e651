"""Compile a chat template the way transformers renders it (its ``{% generation %}`` tag, loop
controls and filters), to report a template that does not parse when the model is chosen.

transformers has no public compiler: ``apply_chat_template`` uses the private
``transformers.utils.chat_template_utils._compile_jinja_template``. Without it (another
transformers layout) a sandboxed jinja2 environment with loop controls compiles most templates.
"""

from __future__ import annotations

WRITTEN_FOR = {"transformers": "5.25.0"}


def still_needed() -> bool:
    """True while transformers offers no public compiler of a chat template."""
    from transformers.utils import chat_template_utils as ctu

    return not any(hasattr(ctu, n) for n in ("compile_jinja_template", "compile_chat_template"))


def compile_chat_template(text: str):
    """The compiled template; raises jinja2.TemplateSyntaxError when it does not parse."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template as compile_template
    except ImportError:  # pragma: no cover - another transformers layout
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        compile_template = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).from_string
    return compile_template(text)
