"""Chat templates rendered as Transformers renders them: jinja2's immutable sandbox with
trim_blocks and lstrip_blocks, loop controls, the `{% generation %}` block (rendered as its body),
`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII characters and does not escape
HTML, and a `namespace` that refuses underscore names. Messages reach the template as plain JSON data
(keys whose value is None dropped; reasoning under its usual names)."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from runtime.errors import GenerationError

REASONING = ("reasoning_content", "thinking", "reasoning")


def _plain(value):
    """JSON-like data only: a template must not reach methods of arbitrary objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _message(message) -> dict:
    if not isinstance(message, dict):
        raise GenerationError(f"chat messages must be dicts with 'role' and 'content', got {message!r}")
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in REASONING if message.get(k) is not None), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return _plain(message)


@lru_cache(maxsize=16)
def compile_template(source: str):
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's part; rendered as its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set the attribute {name!r}")

    class Dict:
        """`dict(...)` in a template, without the dict type itself."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=Dict(), namespace=Namespace)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise GenerationError(f"the chat template does not parse: {err} (line {err.lineno})") from None


def render(source: str, messages: list, add_generation_prompt: bool = False, tools=None, documents=None,
           **variables) -> str:
    """The conversation as text. `variables`: the tokenizer's special tokens (bos_token, ...) and any
    extra template arguments."""
    import jinja2
    if not isinstance(messages, (list, tuple)) or not messages:
        raise GenerationError("a chat needs a non-empty list of messages")
    for name, items in (("tools", tools), ("documents", documents)):
        if items is not None and not all(isinstance(item, dict) for item in items):
            raise GenerationError(f"chat {name} must be a list of dicts (JSON schemas for tools)")
    template = compile_template(source)
    try:
        return template.render(messages=[_message(m) for m in messages], tools=_plain(tools),
                               documents=_plain(documents), add_generation_prompt=add_generation_prompt,
                               **_plain(variables))
    except jinja2.exceptions.TemplateError as err:
        raise GenerationError(f"the chat template refused the conversation: {err}") from None
