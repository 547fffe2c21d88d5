"""`Spec`: a spec file validated against the schema and turned into typed declarations.

Everything here is still the author's view (blocks, params, op lines, weight rules); the IR comes
later (`compiler.lower`). Expressions are parsed here so that a bad one points at its YAML line.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from compiler.errors import Problem, SpecError
from compiler.extends import load_resolved
from compiler.ops import OPS
from compiler.ops.params import PARAM_KINDS
from compiler.ops.registry import LINE_KEYS, Dims   # LINE_KEYS: a line's op, its stable label, its when
from compiler.schema import spec_schema
from compiler.schema_messages import explained, schema_sentence
from compiler.shorthand import expand_config_entry
from compiler.yaml_source import PathT, SourceMap, format_path
from runtime.expr import Expr, ExprError, parse_expr

FREE_DIM = re.compile(r"^[A-Z][A-Z0-9_]*$")   # B, S, S_ENC: sizes known only at run time
# In op attributes of a repeated block (and the blocks it calls): the index of the layer, from 0, so
# one expression describes per-layer choices (`window: w if layer_types[layer] == 'sliding' else null`).
LAYER_INDEX = "layer"


@dataclass
class ConfigEntry:
    name: str
    hf: list[str]
    type: str
    default: Any            # an Expr, or a literal for str/dict/list entries, or None
    has_default: bool
    path: PathT
    doc: str = ""


@dataclass
class Check:
    that: Expr
    message: str
    path: PathT


@dataclass
class ParamDecl:
    name: str
    kind: str                        # a PARAM_KINDS name, or "block"
    dims: dict[str, Expr]            # for tensor kinds: linear -> {"in": .., "out": ..}
    options: dict[str, Expr]         # e.g. bias
    block: str | None = None         # for kind "block"
    repeat: Expr | None = None       # for a repeated block
    tied_to: str | None = None
    tied_when: Expr | None = None
    path: PathT = ()
    static: bool = False             # a block whose inputs do not change while decoding: run once
    when: Expr | None = None         # the param exists only where this holds
    with_: dict[str, Expr] = field(default_factory=dict)   # kind "block": the block's option values


@dataclass
class OpLine:
    outputs: list[str]
    op: str
    fields: dict[str, Any]           # operands/params as names; attributes as Exprs
    path: PathT
    when: Expr | None = None         # the line runs only where this holds
    label: str | None = None         # its stable name, for `extends:` edits


# The runtime-contract keys a model input may declare (compiler/contract.py reads them).
INPUT_ROLES = ("mask", "supplied", "of", "default")


@dataclass
class InputDecl:
    name: str
    shape: tuple[Expr, ...]
    dtype: str
    path: PathT
    roles: dict[str, Any] = field(default_factory=dict)   # the INPUT_ROLES the model input declares


@dataclass
class GenerateDecl:
    """`generate:` on the model: the input generation extends, the output it reads, the start token."""
    tokens: str | None
    logits: str | None
    start: Expr | None
    path: PathT


@dataclass
class LossDecl:
    """`loss:` on the model or a head: a kind of runtime/loss_kinds.py, the outputs it reads (default:
    the block's, in order) and the kind's options as config expressions."""
    kind: str
    outputs: list[str] | None
    options: dict[str, Expr]
    path: PathT


@dataclass
class InitDecl:
    """`init:` how a model without a checkpoint is initialised, as the architecture's reference does."""
    std: Expr | None
    distribution: str
    norm: Expr | None
    params: dict[str, tuple[str, Expr]]     # tensor name template -> ("std" | "value", expression)
    path: PathT


@dataclass
class BlockDecl:
    name: str
    inputs: dict[str, InputDecl]
    params: dict[str, ParamDecl]
    graph: list[OpLine]
    outputs: list[str]
    path: PathT
    doc: str = ""
    generate: GenerateDecl | None = None     # the model's `generate:`, when declared
    # Option name -> default: values a use of the block may set (`{block: attention, with: {causal: false}}`),
    # usable in every expression of the block.
    options: dict[str, Expr] = field(default_factory=dict)
    source: str = ""                         # an instance: the spec block it instantiates (its name otherwise)
    loss: LossDecl | None = None             # the training loss of its outputs, when declared
    last_hidden: str | None = None           # the value ending output_hidden_states of its repeat


@dataclass
class WeightRule:
    sources: list[str]
    targets: list[str]
    transforms: list[Any]
    when: Expr | None
    path: PathT
    ignore: str | None = None        # a tensor the model does not need, and why (targets are empty)
    legacy: bool = False             # an older layout: read when loading, not chosen when saving


@dataclass
class HeadDecl:
    """A task head: a block over the model's outputs, built on top of the trunk when it is chosen."""
    name: str
    architectures: list[str]
    block: BlockDecl                 # its inputs are the model's outputs, filled in by the lowering
    path: PathT


@dataclass
class Spec:
    name: str
    file: str | None
    data: dict                        # the spec as plain data (what the artifact stores)
    sources: SourceMap
    matches: dict[str, list[str]]
    config: dict[str, ConfigEntry]
    checks: list[Check]
    blocks: dict[str, BlockDecl]
    model: BlockDecl
    weights: list[WeightRule]
    doc: str = ""
    sha256: str = field(default="")
    heads: dict[str, HeadDecl] = field(default_factory=dict)
    base_prefix: str = ""            # carried by the trunk's tensors in checkpoints saved with a head
    init: InitDecl | None = None     # how a model without a checkpoint is initialised

    def block(self, name: str) -> BlockDecl:
        """A block declaration by name; "model" is the model's."""
        return self.model if name == "model" else self.blocks[name]

    def all_blocks(self) -> dict[str, BlockDecl]:
        return {**self.blocks, "model": self.model}

    def problem(self, path: PathT, message: str) -> Problem:
        return self.sources.problem(path, message)


@lru_cache(maxsize=None)
def _python_regex(pattern: str) -> str:
    """A JSON Schema pattern (an ECMA-262 regex) for Python's re: there `$` matches only at the very
    end, in Python also before a final newline, so that `llama\\n` would pass `^[a-z]+$`."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not re.search(_python_regex(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})(schema)


def load_spec(path: str | Path, text: str | None = None) -> Spec:
    """Read, schema-validate and parse a spec file. Raises SpecError listing every problem found."""
    data, sources = load_resolved(path, text)
    return spec_from_data(data, sources)


def spec_from_data(data: Any, sources: SourceMap | None = None) -> Spec:
    sources = sources or SourceMap(None)
    if not isinstance(data, dict):
        raise SpecError(sources.problem((), "a spec must be a YAML mapping with spec, name, config, blocks, model, weights"))
    if "extends" in data:
        raise SpecError(sources.problem(("extends",), "extends is resolved when a spec is loaded from its file "
                                                      "(load_spec), not from plain data"))
    problems = [_schema_problem(err, sources) for err in _schema_errors(data)]
    if problems:
        raise SpecError(problems)
    builder = _Builder(sources)
    spec = builder.spec(data)
    if builder.problems:
        raise SpecError(builder.problems)
    return spec


def _schema_errors(data: dict) -> list[jsonschema.ValidationError]:
    errors = []
    for err in _validator().iter_errors(data):
        # if/then and oneOf wrap the real complaint; report the innermost ones.
        leaves = list(_leaves(err))
        errors.extend(leaves)
    seen, unique = set(), []
    for err in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        key = (tuple(err.absolute_path), err.message)
        if key not in seen:
            seen.add(key)
            unique.append(err)
    return explained(unique)


def _leaves(err: jsonschema.ValidationError):
    if err.validator in ("oneOf", "anyOf") and err.context:
        # Pick the branch that got furthest rather than listing every alternative's complaint.
        best = max(err.context, key=lambda e: (len(e.absolute_path), -len(list(e.context or []))))
        if len(best.absolute_path) > len(err.absolute_path):
            yield from _leaves(best)
            return
    if err.context and err.validator not in ("oneOf", "anyOf"):
        for sub in err.context:
            yield from _leaves(sub)
        return
    yield err


def _schema_problem(err: jsonschema.ValidationError, sources: SourceMap) -> Problem:
    path, message = schema_sentence(err)
    return sources.problem(path, message)


class _Builder:
    def __init__(self, sources: SourceMap):
        self.sources = sources
        self.problems: list[Problem] = []

    def fail(self, path: PathT, message: str) -> None:
        self.problems.append(self.sources.problem(path, message))

    def expr(self, value: Any, path: PathT, dims: bool = False) -> Expr | None:
        """The parsed expression (`dims`: a list of them, an op's dims attribute: `shape: [0, 0, num_heads,
        -1]`); one without names is also evaluated here, so that `1 / 0` is reported at its line rather
        than by whichever pass or load first evaluates it."""
        try:
            if dims:
                return Dims(value)
            e = parse_expr(value)
            if e.is_constant():
                e.evaluate({})
            return e
        except ExprError as err:
            self.fail(path, f"bad expression {value!r}: {err}")
            return None

    def size(self, value: Any, path: PathT) -> Expr | None:
        """An expression for a size or a count; a constant one must be a non-negative integer now,
        not when a shape rule or the loader first evaluates it."""
        e = self.expr(value, path)
        if e is None or not e.is_constant():
            return e
        n = e.evaluate({})
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            self.fail(path, f"a size must be a non-negative integer, {value!r} is {_shown(n)}")
            return None
        return e

    def spec(self, data: dict) -> Spec:
        config = {n: self.config_entry(n, e, ("config", n)) for n, e in data["config"].items()}
        checks = [Check(self.expr(c["that"], ("checks", i, "that")), c["else"], ("checks", i))
                  for i, c in enumerate(data.get("checks", []))]
        blocks = {n: self.block(n, b, ("blocks", n)) for n, b in data["blocks"].items()}
        model = self.block("model", data["model"], ("model",))
        weights = [self.weight_rule(r, ("weights", i)) for i, r in enumerate(data["weights"])]
        heads = {n: self.head(n, h, ("heads", n)) for n, h in data.get("heads", {}).items()}
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        return Spec(name=data["name"], file=self.sources.file, data=data, sources=self.sources,
                    matches=data.get("matches", {}), config=config, checks=checks, blocks=blocks,
                    model=model, weights=weights, doc=data.get("doc", ""), sha256=digest,
                    heads=heads, base_prefix=data.get("base_prefix", ""),
                    init=self.init(data["init"], ("init",)) if "init" in data else None)

    def init(self, data: dict, path: PathT) -> InitDecl:
        def opt(key):
            return self.expr(data[key], path + (key,)) if key in data else None
        params = {}
        for template, rule in data.get("params", {}).items():
            (how, value), = rule.items()
            params[template] = (how, self.expr(value, path + ("params", template, how)))
        return InitDecl(opt("std"), data.get("distribution", "normal"), opt("norm"), params, path)

    def loss(self, data, path: PathT) -> LossDecl:
        if isinstance(data, str):
            return LossDecl(data, None, {}, path)
        options = {k: self.expr(v, path + (k,)) for k, v in data.items() if k not in ("kind", "outputs")}
        return LossDecl(data["kind"], list(data["outputs"]) if "outputs" in data else None, options, path)

    def head(self, name: str, data: dict, path: PathT) -> HeadDecl:
        body = {"inputs": {}, "graph": data.get("graph", []), "outputs": data["outputs"],
                "params": data.get("params", {}), "doc": data.get("doc", ""),
                **({"loss": data["loss"]} if "loss" in data else {})}
        return HeadDecl(name, list(data.get("architectures", [])), self.block(name, body, path), path)

    def config_entry(self, name: str, entry: dict | str, path: PathT) -> ConfigEntry:
        short = isinstance(entry, str)
        entry = expand_config_entry(name, entry)
        hf = entry.get("hf", [])
        hf = [hf] if isinstance(hf, str) else list(hf)
        kind = entry.get("type", "any")
        has_default = "default" in entry
        default = entry.get("default")
        if short and kind in ("dict", "list") and default is not None:
            self.fail(path, f"a {kind} default in the short form can only be null; write the mapping "
                            f"{{type: {kind}, default: ...}} for other values")
        # Strings are expressions except where the entry holds text or structure: a str default
        # is the text itself (`default: silu`), dict/list defaults are literal data.
        if has_default and kind not in ("str", "dict", "list", "any") and default is not None:
            default = self.expr(default, path + ("default",))
        elif has_default and kind == "any" and isinstance(default, (int, float, bool)):
            default = self.expr(default, path + ("default",))
        return ConfigEntry(name, hf, kind, default, has_default, path, entry.get("doc", ""))

    def block(self, name: str, data: dict, path: PathT) -> BlockDecl:
        inputs = {}
        for iname, decl in data["inputs"].items():
            ipath = path + ("inputs", iname)
            shape, dtype = (decl, "float") if isinstance(decl, list) else (decl["shape"], decl.get("dtype", "float"))
            dims = tuple(self.size(d, ipath + (i,)) for i, d in enumerate(shape))
            roles = {k: decl[k] for k in INPUT_ROLES if isinstance(decl, dict) and k in decl}
            inputs[iname] = InputDecl(iname, dims, dtype, ipath, roles)
        params = {p: self.param(p, d, path + ("params", p)) for p, d in data.get("params", {}).items()}
        graph, labels = [], {}
        for i, line in enumerate(data["graph"]):
            (outs, body), = line.items()
            lpath = path + ("graph", i, outs)
            label = body.get("label")
            if label is not None and label in labels:
                self.fail(lpath + ("label",), f"label '{label}' is already used by the line at {describe_path(labels[label])}; "
                                              "labels name one line of their graph")
            labels.setdefault(label, lpath)
            fields = {}
            op = OPS.get(body["op"])
            for key, value in body.items():
                if key in LINE_KEYS:
                    continue
                attr = op.attr(key) if op is not None else None
                if attr is not None and attr.type == "enum":
                    value = repr(value)     # a choice is text (`approximate: tanh`), not a config name
                fields[key] = self.expr(value, lpath + (key,), attr.type == "dims") if attr is not None else value
            when = self.expr(body["when"], lpath + ("when",)) if "when" in body else None
            graph.append(OpLine([o.strip() for o in outs.split(",")], body["op"], fields, lpath, when, label))
        generate = None
        if "generate" in data:
            g = data["generate"]
            start = self.expr(g["start"], path + ("generate", "start")) if g.get("start") is not None else None
            generate = GenerateDecl(g.get("tokens"), g.get("logits"), start, path + ("generate",))
        options = {o: self.expr(v, path + ("options", o)) for o, v in data.get("options", {}).items()}
        loss = self.loss(data["loss"], path + ("loss",)) if "loss" in data else None
        return BlockDecl(name, inputs, params, graph, list(data["outputs"]), path, data.get("doc", ""), generate,
                         options, name, loss, data.get("last_hidden"))

    def param(self, name: str, data: dict, path: PathT) -> ParamDecl:
        tied = data.get("tied")
        tied_to = tied["to"] if tied else None
        tied_when = self.expr(tied.get("when", True), path + ("tied", "when")) if tied else None
        when = self.expr(data["when"], path + ("when",)) if "when" in data else None
        if "block" in data:
            repeat = self.size(data["repeat"], path + ("repeat",)) if "repeat" in data else None
            with_ = {o: self.expr(v, path + ("with", o)) for o, v in data.get("with", {}).items()}
            return ParamDecl(name, "block", {}, {}, block=data["block"], repeat=repeat, path=path,
                             static=bool(data.get("static", False)), when=when, with_=with_)
        (kind_name,) = [k for k in data if k in PARAM_KINDS]
        kind = PARAM_KINDS[kind_name]
        shape = data[kind_name]
        shape = shape if isinstance(shape, list) else [shape]
        names = [f"d{i}" for i in range(len(shape))] if kind.variadic else kind.dims
        dims = {d: self.size(v, path + (kind_name, i)) for i, (d, v) in enumerate(zip(names, shape))}
        options = {o: self.expr(data.get(o, default), path + (o,)) for o, default in kind.options.items()}
        return ParamDecl(name, kind_name, dims, options, tied_to=tied_to, tied_when=tied_when, path=path, when=when)

    def weight_rule(self, data: dict, path: PathT) -> WeightRule:
        if ("to" in data) == ("ignore" in data):
            self.fail(path, "a weight rule needs either 'to' (the params its tensors feed) or 'ignore' "
                            "(why its tensors are deliberately not loaded), not both")
        elif "ignore" in data and ("transforms" in data or not isinstance(data["from"], str)):
            self.fail(path, "an 'ignore' rule takes one 'from' template and no transforms")
        sources = [data["from"]] if isinstance(data["from"], str) else list(data["from"])
        to = data.get("to", [])
        targets = [to] if isinstance(to, str) else list(to)
        when = self.expr(data["when"], path + ("when",)) if "when" in data else None
        if "ignore" in data:
            return WeightRule(sources, [], [], when, path, ignore=data["ignore"])
        transforms = []
        for i, t in enumerate(data.get("transforms", [])):
            tpath = path + ("transforms", i)
            if isinstance(t, dict) and "split" in t and "sizes" in t["split"]:
                sizes = [self.size(s, tpath + ("split", "sizes", j)) for j, s in enumerate(t["split"]["sizes"])]
                t = {"split": {"dim": t["split"]["dim"], "sizes": sizes}}
            elif isinstance(t, dict) and "reshape" in t:
                t = {"reshape": [self.expr(s, tpath + ("reshape", j)) for j, s in enumerate(t["reshape"])]}
            elif isinstance(t, dict) and ("stack" in t or "unstack" in t):
                # the default dim written out, as interface.json records it
                kind = "stack" if "stack" in t else "unstack"
                t = {kind: {"over": t[kind]["over"], "dim": t[kind].get("dim", 0)}}
            transforms.append(t)
        return WeightRule(sources, targets, transforms, when, path, data.get("ignore"), bool(data.get("legacy", False)))


def _shown(value: Any) -> str:
    return f"a {type(value).__name__} ({value!r})" if not isinstance(value, int) else str(value)


def describe_path(path: PathT) -> str:
    return format_path(path)
