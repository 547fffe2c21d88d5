"""Short forms of the spec language, expanded to the long forms everything else reads.

A config entry is read from config.json unless it is derived, and the rule fits in one sentence:
**an entry is derived (computed from other entries, never read) exactly when it is a mapping with a
`default` and no `hf` (or `hf: []`, how a child stops reading its parent's entry).** Every other entry is read, from the keys `hf` names or else from the key of
its own name:

    vocab_size: int                            # {hf: vocab_size, type: int}: required
    rms_norm_eps: float = 1e-6                 # {hf: rms_norm_eps, type: float, default: 1e-6}
    head_dim: int = hidden_size // num_heads   # read head_dim; absent or null: the expression
    hidden_act: str = silu                     # a str default is the text itself
    rope_scaling: dict = null                  # dict, list and any defaults: null, or the mapping form
    vocab_size: {type: int, doc: ...}          # a mapping without hf or default: read vocab_size
    rotary_dim: {type: int, default: int(head_dim * partial_rotary)}   # derived, never read
"""
from __future__ import annotations

import re
from typing import Any

from runtime.expr import ExprError, parse_expr

CONFIG_TYPES = ("int", "float", "bool", "str", "dict", "list", "any")
SHORT_CONFIG = re.compile(r"^\s*(" + "|".join(CONFIG_TYPES) + r")\s*(?:=\s*(.*?))?\s*$", re.DOTALL)
SHORT_CONFIG_PATTERN = SHORT_CONFIG.pattern


def expand_config_entry(name: str, entry: Any) -> Any:
    """The long form `{hf, type, default, doc}` of a config entry, with `hf` explicit for every entry
    that is read. Anything malformed is returned as it is, for the schema to report."""
    if isinstance(entry, str):
        m = SHORT_CONFIG.match(entry)
        if m is None:
            return entry
        kind, default = m.group(1), m.group(2)
        out: dict = {"hf": name, "type": kind}
        if default is not None:
            out["default"] = _short_default(kind, default)
        return out
    if isinstance(entry, dict) and "hf" not in entry and "default" not in entry:
        return {"hf": name, **entry}
    return entry


def _short_default(kind: str, text: str) -> Any:
    """`TYPE = TEXT`: the default as the mapping form would hold it."""
    if text in ("null", "None"):
        return None
    if kind == "str":
        return text                      # `hidden_act: str = silu`: the text itself
    if kind in ("dict", "list"):
        return text                      # not null: left for the checker, which asks for the mapping form
    if kind == "any":
        try:
            e = parse_expr(text)
        except ExprError:
            return text
        return e.evaluate({}) if e.is_constant() else text
    return text                          # int / float / bool: an expression over other entries
