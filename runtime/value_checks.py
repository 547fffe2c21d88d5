"""Checks of op attribute values that only the config decides (an eps, a rope scaling dict), run once
at load before anything is built. An op attribute names its check (`Attr.check`, compiler/ops); the
compiler lists each use in interface.json (`value_checks`: the check, the value's expression, the spec
line); resolve_config (runtime/config.py) evaluates the expression and runs the check here. Each check
returns what is wrong in words, or None."""
from __future__ import annotations

import math

# the rope types runtime/ops/rotary.py computes
ROPE_TYPES = ("default", "linear", "llama3", "longrope")
ROPE_ALIASES = {"su": "longrope"}   # the first LongRoPE configs named it after its authors' "su" scaling


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value) -> str | None:
    if not _number(value) or value <= 0:
        return f"must be a finite number > 0, got {value!r}"
    return None


def _positive_key(d: dict, key: str, kind: str) -> str | None:
    if key not in d:
        return f"a {kind} scaling dict needs '{key}'"
    if positive(d[key]):
        return f"'{key}' {positive(d[key])}"
    return None


def rope_scaling(value) -> str | None:
    """A rope_scaling / rope_parameters dict as Transformers writes it (4.x `type`, 5.x `rope_type`),
    with the keys its type needs, of the right kinds; None (no scaling) is fine."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"must be a JSON object (a rope scaling dict) or null, got {type(value).__name__}"
    kind = value.get("rope_type", value.get("type", "default"))
    if not isinstance(kind, str):
        return f"'rope_type' must be a string, got {kind!r}"
    kind = ROPE_ALIASES.get(kind, kind)
    if kind not in ROPE_TYPES:
        return f"rope type {kind!r} is not one of {', '.join(ROPE_TYPES)}"
    for key in ("rope_theta", "factor", "attention_factor", "original_max_position_embeddings",
                "low_freq_factor", "high_freq_factor", "partial_rotary_factor"):
        if value.get(key) is not None and positive(value[key]):
            return f"'{key}' {positive(value[key])}"
    if kind == "linear":
        return _positive_key(value, "factor", kind)
    if kind == "llama3":
        for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            problem = _positive_key(value, key, kind)
            if problem:
                return problem
        if value["low_freq_factor"] >= value["high_freq_factor"]:
            return (f"'low_freq_factor' ({value['low_freq_factor']}) must be below 'high_freq_factor' "
                    f"({value['high_freq_factor']})")
    if kind == "longrope":
        for key in ("long_factor", "short_factor"):
            factors = value.get(key)
            if not isinstance(factors, list) or not factors or any(positive(f) for f in factors):
                return f"a longrope scaling dict needs '{key}': a list of numbers > 0, got {factors!r}"
    return None


CHECKS = {"positive": positive, "rope_scaling": rope_scaling}
