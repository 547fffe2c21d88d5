"""Schema violations as sentences: what was expected where, in the spec's own words.

jsonschema says `'x' is a required property` and where in the schema it looked; an author needs
"op 'silu' needs x" at the line of that op. Each message names the thing it is about (an op, a
config entry, a param, a weight rule, ...) from where the error sits in the spec, and what that
thing takes. Suggestions come only for slips (compiler.errors.did_you_mean).
"""
from __future__ import annotations

from typing import Any

import jsonschema

from compiler.errors import did_you_mean
from compiler.ops import OPS
from compiler.yaml_source import PathT, format_path

TYPE_WORDS = {"string": "text", "object": "a mapping", "array": "a list", "integer": "an integer",
              "number": "a number", "boolean": "true or false", "null": "null"}
# What the patterns of compiler/schema.py mean.
PATTERN_WORDS = {
    r"^[A-Za-z_][A-Za-z0-9_]*$": "a name of letters, digits and _ that does not start with a digit",
    r"^[A-Za-z_][A-Za-z0-9_]*(\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*$": "output names separated by commas",
    r"^[a-z_][a-z0-9_]*(\+[a-z_][a-z0-9_]*)+$": "op names joined by + (add+rms_norm)",
}
STRUCTURAL_FIELDS = {"call": "block and the inputs of that block", "repeat": "block and the inputs of that block"}


def schema_sentence(err: jsonschema.ValidationError) -> tuple[PathT, str]:
    """(where, what): the YAML path the problem points at and the sentence saying it."""
    inner = _branch_of_its_kind(err)
    if inner is not None:
        return schema_sentence(inner)
    path = tuple(err.absolute_path)
    v, instance = err.validator, err.instance
    if v == "enum" and path and path[-1] == "op":
        return path, f"unknown op '{instance}'{did_you_mean(str(instance), err.validator_value)}"
    if v == "additionalProperties" and not err.validator_value:
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in instance if k not in allowed]
        return path + (extra[0],), _extra_fields(path, instance, extra, allowed)
    if v == "oneOf" and all(set(b) == {"required"} for b in err.validator_value):
        kinds = [b["required"][0] for b in err.validator_value]
        present = [k for k in instance if k in kinds] if isinstance(instance, dict) else []
        others = [k for k in instance if k not in kinds] if isinstance(instance, dict) else []
        gives = f" gives {_words(present, 'and')};" if len(present) > 1 else ""
        hint = "".join(did_you_mean(k, kinds) for k in others[:1]) if not present else ""
        return path, f"{noun(path, instance)}{gives} needs exactly one kind: {_words(kinds, 'or')}{hint}"
    if v == "required":
        missing = [k for k in err.validator_value if k not in instance]
        takes = f" (it takes {_op_fields(instance['op'])})" if _is_op_line(path, instance) else ""
        return path, f"{noun(path, instance)} needs {_words(missing, 'and')}{takes}"
    return path, f"{_field(path)} {_expected(err)}, got {_show(instance)}"


JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def _branch_of_its_kind(err: jsonschema.ValidationError) -> jsonschema.ValidationError | None:
    """For 'none of the forms fit' (a config entry is `int = 0` text or a mapping): when only one form
    takes a value of this kind, that form's own complaint, which says what is wrong inside it."""
    if err.validator not in ("anyOf", "oneOf") or not err.context:
        return None
    kind = JSON_TYPES.get(type(err.instance))
    forms = [i for i, form in enumerate(err.validator_value) if form.get("type") == kind]
    if len(forms) != 1:
        return None
    inside = [e for e in err.context if e.relative_schema_path and e.relative_schema_path[0] == forms[0]]
    return jsonschema.exceptions.best_match(inside) if inside else None


def _expected(err: jsonschema.ValidationError) -> str:
    v, value, schema = err.validator, err.validator_value, err.schema
    if v == "enum":
        return f"must be one of {_words([_show(c) for c in value], 'or')}"
    if v == "const":
        return f"must be {_show(value)}"
    if v == "type":
        described = schema.get("description")
        kinds = [value] if isinstance(value, str) else value
        return f"must be {described or _words([TYPE_WORDS.get(k, k) for k in kinds], 'or')}"
    if v == "pattern":
        return f"must be {PATTERN_WORDS.get(value, f'text matching {value}')}"
    if v in ("minItems", "maxItems"):
        described = f" ({schema['description']})" if schema.get("description") else ""
        return f"needs {'at least' if v == 'minItems' else 'at most'} {value} entr{'y' if value == 1 else 'ies'}{described}"
    if v in ("minProperties", "maxProperties"):
        return f"needs {'at least' if v == 'minProperties' else 'at most'} {value} key{'' if value == 1 else 's'}"
    if v == "minLength":
        return "must not be empty"
    return err.message


def _extra_fields(path: PathT, instance: dict, extra: list[str], allowed: list[str]) -> str:
    what = noun(path, instance)
    if _is_op_line(path, instance):
        takes = _op_fields(instance["op"])
        allowed = [f for f in allowed if f != "op"]
    else:
        takes = _words(allowed, "and")
    wrong = _words([f"'{k}'" for k in extra], "and")
    verb = "is not one of its fields" if len(extra) == 1 else "are not among its fields"
    return f"{what} takes {takes}; {wrong} {verb}{did_you_mean(extra[0], allowed)}"


def noun(path: PathT, instance: Any = None) -> str:
    """What the mapping at `path` is, in the spec's words."""
    if _is_op_line(path, instance):
        return f"op '{instance['op']}'"
    n = len(path)
    if n == 0:
        return "the spec"
    if n == 2 and path[0] == "config":
        return f"config entry '{path[1]}'"
    if n >= 2 and path[-2] == "params":
        return f"param '{path[-1]}'"
    if n == 2 and path[0] == "weights":
        return f"weight rule {path[1]}"
    if n == 2 and path[0] == "checks":
        return f"check {path[1]}"
    if path == ("model",):
        return "the model"
    if n == 2 and path[0] in ("blocks", "heads"):
        return f"{path[0][:-1]} '{path[1]}'"
    return format_path(path)


def _is_op_line(path: PathT, instance: Any) -> bool:
    return isinstance(instance, dict) and isinstance(instance.get("op"), str) and len(path) >= 3 and path[-3] == "graph"


def _op_fields(name: str) -> str:
    """`x and cap`, `cond, a and optionally b or value`: what an op line may give besides `op`."""
    if name in STRUCTURAL_FIELDS:
        return STRUCTURAL_FIELDS[name]
    op = OPS.get(name)
    if op is None:
        return "the fields of its op"
    required = [*(o for o in op.operands if o not in op.optional_operands), *op.params,
                *(a.name for a in op.attrs if a.required)]
    optional = [*op.optional_operands, *(a.name for a in op.attrs if not a.required)]
    text = _words(required, "and") if required else "no operands"
    return text + (f"; optionally {_words(optional, 'and')}" if optional else "")


def _field(path: PathT) -> str:
    """The value by its key (the line and full path are printed before the message)."""
    if not path:
        return "the spec"
    if isinstance(path[-1], int):
        return f"entry {path[-1]} of {_field(path[:-1])}"
    return str(path[-1])


def explained(errors: list[jsonschema.ValidationError]) -> list[jsonschema.ValidationError]:
    """Without the errors inside a mapping that gives several kinds at once (a param that is both a
    linear and an embedding): its 'needs exactly one kind' says it, each kind's field list would not."""
    kinds = [tuple(e.absolute_path) for e in errors
             if e.validator == "oneOf" and all(set(b) == {"required"} for b in e.validator_value)]
    return [e for e in errors if e.validator == "oneOf"
            or not any(tuple(e.absolute_path)[:len(k)] == k for k in kinds)]


def _words(items: list[str], last: str) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)
