"""The JSON Schema (draft 2020-12) of the spec language, generated from the op and param registries.

`schemas/spec.schema.json` is this output, checked in so editors can use it; a test regenerates it
and fails if the checked-in copy is stale (`graphspec schema > schemas/spec.schema.json`).
"""
from __future__ import annotations

import json

from compiler.ops import OPS
from compiler.ops.params import PARAM_KINDS
from compiler.shorthand import CONFIG_TYPES, SHORT_CONFIG_PATTERN
from runtime.loss_kinds import LOSS_KINDS

IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
EXPR = {"type": ["string", "number", "boolean", "null"], "description": "a literal or a config expression"}
VALUE = {"type": "string", "pattern": IDENT, "description": "the name of a tensor value"}
NAME = {"type": "string", "pattern": IDENT}
OUTPUTS = r"^[A-Za-z_][A-Za-z0-9_]*(\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*$"
DIM = {"type": ["string", "integer"], "description": "a config expression or a free dimension (B, S)"}
SHAPE = {"type": "array", "items": DIM}
DIMS = {"type": "array", "items": {"type": ["string", "integer"]}, "minItems": 1,
        "description": "a list of config expressions"}
CONFIG_TYPES = ["int", "float", "bool", "str", "dict", "list", "any"]


# Every line may carry these besides its op's fields (compiler/ops/registry.py LINE_KEYS).
LINE_FIELDS = {"label": {"type": "string", "pattern": IDENT,
                         "description": "a stable name for the line, unique in its graph, that extends: edits target"},
               "when": {**EXPR, "description": "the line runs only where this holds (config names, block "
                                               "options, the layer index); a value it rebinds keeps its "
                                               "previous value elsewhere"}}
WHEN = {**EXPR, "description": "the param exists only where this holds (config names, block options, the "
                               "layer index); the lines using it need the same when"}


def _op_line(name: str) -> dict:
    if name in ("call", "repeat"):
        return {"properties": {"op": {"const": name}, "block": {"type": "string", "pattern": IDENT}, **LINE_FIELDS},
                "required": ["op", "block"], "additionalProperties": VALUE}
    op = OPS[name]
    props: dict = {"op": {"const": name}, **LINE_FIELDS}
    for operand in op.operands:
        props[operand] = VALUE
    for pname in op.params:
        props[pname] = {"type": "string", "pattern": IDENT, "description": f"a param of kind {op.params[pname]}"}
    for attr in op.attrs:
        props[attr.name] = {"enum": list(attr.choices)} if attr.type == "enum" else DIMS if attr.type == "dims" else EXPR
    required = ["op", *(o for o in op.operands if o not in op.optional_operands), *op.params,
                *(a.name for a in op.attrs if a.required)]
    return {"properties": props, "required": required, "additionalProperties": False}


def _param() -> dict:
    kinds = []
    for kind in PARAM_KINDS.values():
        dims = {"type": "array", "items": DIM, "minItems": len(kind.dims), "maxItems": len(kind.dims),
                "description": f"[{', '.join(kind.dims)}]"}
        if kind.variadic:
            dims = {"oneOf": [DIM, {"type": "array", "items": DIM, "minItems": 1}]}
        elif len(kind.dims) == 1:
            dims = {"oneOf": [DIM, dims]}
        props = {kind.name: dims, **{o: EXPR for o in kind.options},
                 "tied": {"$ref": "#/$defs/tie"}, "doc": {"type": "string"}, "when": WHEN}
        kinds.append({"if": {"required": [kind.name]},
                      "then": {"properties": props, "additionalProperties": False}})
    block = {"if": {"required": ["block"]},
             "then": {"properties": {"block": {"type": "string", "pattern": IDENT}, "repeat": EXPR,
                                     "doc": {"type": "string"},
                                     "static": {"type": "boolean", "description": "its inputs do not change "
                                                "while decoding (an encoder, cross-attention keys): "
                                                "generate runs it once"},
                                     "when": WHEN,
                                     "with": {"type": "object", "propertyNames": {"pattern": IDENT},
                                              "additionalProperties": EXPR,
                                              "description": "values of the block's options for this use; "
                                                             "uses with different values are separate instances"}},
                      "additionalProperties": False}}
    one_of_kinds = [{"required": [k]} for k in [*PARAM_KINDS, "block"]]
    return {"type": "object", "oneOf": one_of_kinds, "allOf": [*kinds, block]}


def _loss() -> dict:
    options = sorted({o for k in LOSS_KINDS.values() for o in k.options})
    kinds = {"enum": list(LOSS_KINDS)}
    return {"description": "the training loss of these outputs when the forward call gets targets (labels=...)",
            "oneOf": [kinds, {"type": "object", "required": ["kind"], "additionalProperties": False,
                              "properties": {"kind": kinds, "outputs": {"type": "array", "items": VALUE, "minItems": 1},
                                             **{o: EXPR for o in options}}}]}


def _init() -> dict:
    value = {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
             "properties": {"std": EXPR, "value": EXPR}}
    return {"type": "object", "additionalProperties": False,
            "description": "how a model without a checkpoint is initialised (from_config, new heads, new "
                           "embedding rows), as the architecture's reference does: weights of linear, "
                           "embedding, conv and tensor params ~ distribution(0, std), biases 0, norm scales `norm`",
            "properties": {"std": EXPR, "distribution": {"enum": ["normal", "trunc_normal"]}, "norm": EXPR,
                           "params": {"type": "object", "additionalProperties": value,
                                      "description": "per tensor (a name template of the model's params, "
                                                     "{i} for one name segment): its own std, or a constant value"}}}


def spec_schema() -> dict:
    ops = sorted([*(n for n, op in OPS.items() if not op.internal), "call", "repeat"])
    op_rules = [{"if": {"properties": {"op": {"const": n}}, "required": ["op"]}, "then": _op_line(n)} for n in ops]
    inputs = {"type": "object", "propertyNames": {"pattern": IDENT},
              "additionalProperties": {"oneOf": [SHAPE, {"type": "object", "properties": {
                  "shape": SHAPE, "dtype": {"enum": ["float", "int", "bool"]}, "doc": {"type": "string"}},
                  "required": ["shape"], "additionalProperties": False}]}}
    # The model's inputs may also declare their part of the runtime contract (compiler/contract.py).
    model_inputs = {"type": "object", "propertyNames": {"pattern": IDENT},
                    "additionalProperties": {"oneOf": [SHAPE, {"type": "object", "properties": {
                        "shape": SHAPE, "dtype": {"enum": ["float", "int", "bool"]}, "doc": {"type": "string"},
                        "mask": {"oneOf": [NAME, {"type": "null"}],
                                 "description": "the keyword argument carrying this input's padding mask "
                                                "(1 = a real position), or null for none"},
                        "supplied": {"enum": ["positions", "key_positions", None],
                                     "description": "the runtime computes it when the caller does not pass it: "
                                                    "positions of the new tokens, or of every key so far (with the "
                                                    "KV cache) among the real tokens of the sequence"},
                        "of": {**NAME, "description": "the caller input whose sequence supplied positions count"},
                        "default": {"type": ["number", "boolean", "null"],
                                    "description": "the value filling it when the caller does not pass it"}},
                        "required": ["shape"], "additionalProperties": False}]}}
    generate = {"type": "object", "additionalProperties": False,
                "description": "how generate runs this model (default: derived from the shapes)",
                "properties": {"tokens": {**NAME, "description": "the int input generation extends"},
                               "logits": {**NAME, "description": "the output read for the next token"},
                               "start": {**EXPR, "description": "the first token of an encoder-decoder's "
                                                               "output (a config expression)"}}}
    block = {"type": "object", "required": ["inputs", "graph", "outputs"], "additionalProperties": False,
             "properties": {
                 "doc": {"type": "string"},
                 "options": {"type": "object", "propertyNames": {"pattern": IDENT}, "additionalProperties": EXPR,
                             "description": "option -> default: values each use of the block may set with with:, "
                                            "usable in every expression of the block"},
                 "inputs": inputs,
                 "params": {"type": "object", "propertyNames": {"pattern": IDENT},
                            "additionalProperties": {"$ref": "#/$defs/param"}},
                 "graph": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/line"}},
                 "outputs": {"type": "array", "minItems": 1, "items": VALUE},
                 "last_hidden": {**VALUE, "description": "the value Transformers reports as the last of the "
                                 "hidden states of this block's repeated layers (output_hidden_states), when it is "
                                 "not the last layer's output: a final norm's (the last binding of the name)"}}}
    transform = {"oneOf": [
        {"enum": ["transpose"]},
        {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1, "properties": {
            "split": {"type": "object", "required": ["dim"], "additionalProperties": False,
                      "properties": {"dim": {"type": "integer"}, "sizes": {"type": "array", "items": EXPR}}},
            "concat": {"type": "object", "required": ["dim"], "additionalProperties": False,
                       "properties": {"dim": {"type": "integer"}}},
            "reshape": {"type": "array", "items": EXPR},
            "permute": {"type": "array", "items": {"type": "integer"}},
            **{kind: {"type": "object", "required": ["over"], "additionalProperties": False,
                      "description": doc, "properties": {"over": NAME, "dim": {"type": "integer"}}}
               for kind, doc in (("stack", "the tensors of every value 0, 1, ... of the placeholder `over` (in the "
                                          "from templates only) as one tensor with a new dim `dim` (default 0)"),
                                 ("unstack", "one tensor cut along `dim` (default 0) into the tensors of the "
                                            "placeholder `over` (in the to templates only)"))}}}]}
    names = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
    head = {"type": "object", "required": ["outputs"], "additionalProperties": False,
            "properties": {
                "doc": {"type": "string"},
                "architectures": {"type": "array", "items": {"type": "string"},
                                  "description": "config.json architectures that select this head"},
                "params": block["properties"]["params"],
                "graph": {"type": "array", "items": {"$ref": "#/$defs/line"}},
                "outputs": block["properties"]["outputs"],
                "loss": _loss()}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://graphspec.dev/schemas/spec.schema.json",
        "title": "graphspec model spec, version 1",
        "type": "object",
        "required": ["spec", "name", "config", "blocks", "model", "weights"],
        "additionalProperties": False,
        "properties": {
            "spec": {"const": 1},
            "name": {"type": "string", "pattern": IDENT},
            "doc": {"type": "string"},
            "matches": {"type": "object", "additionalProperties": False, "properties": {
                "model_type": {"type": "array", "items": {"type": "string"}},
                "architectures": {"type": "array", "items": {"type": "string"}}}},
            "config": {"type": "object", "propertyNames": {"pattern": IDENT}, "additionalProperties": {"oneOf": [
                {"type": "string", "pattern": SHORT_CONFIG_PATTERN,
                 "description": "TYPE or TYPE = DEFAULT: read the config.json key of the entry's own name"},
                {"type": "object", "additionalProperties": False,
                 "description": "read from the keys hf names (or its own name); with a default and no hf: "
                                "derived, never read",
                 "properties": {"hf": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                       "description": "config.json keys tried in order; [] (a child's way to "
                                                      "stop reading a parent's entry): derived"},
                                "type": {"enum": list(CONFIG_TYPES)}, "default": True,
                                "doc": {"type": "string"}}}]}},
            "checks": {"type": "array", "items": {"type": "object", "required": ["that", "else"],
                                                  "additionalProperties": False,
                                                  "properties": {"that": EXPR, "else": {"type": "string"}}}},
            "blocks": {"type": "object", "propertyNames": {"pattern": IDENT}, "additionalProperties": block},
            "model": {**block, "properties": {**{k: v for k, v in block["properties"].items() if k != "options"},
                                              "inputs": model_inputs, "generate": generate, "loss": _loss()}},
            "init": _init(),
            "heads": {"type": "object", "propertyNames": {"pattern": IDENT}, "additionalProperties": head,
                      "description": "task heads over the model's outputs; the first is the default"},
            "base_prefix": {"type": "string", "description": "prefix of the trunk's tensors in checkpoints "
                            "saved with a head (bert.); stripped before the weight rules match"},
            "expect_fused": {"type": "array", "items": {"type": "string", "pattern": r"^[a-z_][a-z0-9_]*(\+[a-z_][a-z0-9_]*)+$"},
                             "description": "fusions compilation must achieve, as ops joined by +: add+rms_norm"},
            "weights": {"type": "array", "items": {
                # `to` or `ignore`, one of them: the builder says so in words (compiler/spec.py).
                "type": "object", "required": ["from"], "additionalProperties": False,
                "properties": {
                    "from": names, "to": names, "when": EXPR, "doc": {"type": "string"},
                    "legacy": {"type": "boolean", "description": "an older layout of tensors another rule also "
                               "feeds: read when loading, never chosen when saving a model made without a checkpoint"},
                    "ignore": {"type": "string", "minLength": 1,
                               "description": "why these checkpoint tensors are not loaded (e.g. a saved mask buffer)"},
                    "transforms": {"type": "array", "items": transform}}}},
        },
        "$defs": {
            "line": {"type": "object", "minProperties": 1, "maxProperties": 1,
                     "propertyNames": {"pattern": OUTPUTS},
                     "additionalProperties": {"type": "object", "required": ["op"],
                                              "description": "an op line under the names of its outputs "
                                                             "(`- y: {op: silu, x: h}`)",
                                              "properties": {"op": {"enum": ops}}, "allOf": op_rules}},
            "param": _param(),
            "tie": {"type": "object", "required": ["to"], "additionalProperties": False,
                    "properties": {"to": {"type": "string"}, "when": EXPR}},
        },
    }


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=2, sort_keys=False) + "\n"
