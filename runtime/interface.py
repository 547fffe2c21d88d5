"""An artifact's interface.json, read and validated into records: what the runtime knows of a model.

Config entries, checks, weight rules, tensors, heads and the runtime contract (inputs and their
sources, masks per sequence, outputs, generation, static modules). Expressions are parsed here, once.
A malformed file is an ArtifactError naming the file and the key, never a KeyError or TypeError.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError
from runtime.expr import Expr, ExprError, parse_expr
from runtime.quant.config import ROLES, QuantConfig
from runtime.files import read_json_object
from runtime.value_checks import CHECKS

FORMAT = 2
INTERFACE = "interface.json"
CONFIG_TYPES = ("int", "float", "bool", "str", "dict", "list", "any")
SOURCES = ("caller", "positions", "key_positions", "fill")
DTYPES = ("int", "float", "bool")


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    hf: tuple[str, ...]
    type: str
    default: Any              # an Expr, or a literal value
    has_default: bool
    doc: str = ""


@dataclass(frozen=True)
class Check:
    that: Expr
    message: str


@dataclass(frozen=True)
class WeightRule:
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    transforms: tuple
    when: Expr | None
    ignore: str | None
    legacy: bool = False       # an older layout: read when loading, not chosen when saving


@dataclass(frozen=True)
class TensorRecord:
    name: str
    shape: tuple[Expr, ...]
    when: tuple[Expr, ...]
    tied_to: str | None
    tied_when: Expr | None
    repeat: tuple[tuple[str, Expr], ...]
    head: str | None


@dataclass(frozen=True)
class Loss:
    kind: str                  # runtime/loss_kinds.py
    outputs: tuple[str, ...]   # the outputs it reads
    options: dict[str, Expr]   # the kind's options, over config values


@dataclass(frozen=True)
class Init:
    """How a model without a checkpoint is initialised (runtime/init.py)."""
    std: Expr | None
    distribution: str          # normal | trunc_normal
    norm: Expr | None          # the value of norm scales (1 when None)
    params: dict[str, tuple[str, Expr]]   # tensor name template -> ("std" | "value", expression)


@dataclass(frozen=True)
class Head:
    name: str
    architectures: tuple[str, ...]
    outputs: tuple[str, ...]
    loss: Loss | None = None


@dataclass(frozen=True)
class Input:
    name: str
    dtype: str                 # int | float | bool
    shape: tuple[Expr, ...]
    source: str                # caller | positions | key_positions | fill
    seq: str | None            # the model-level sequence it runs along (dim 1), or None
    value: Any = None          # a fill's value
    below: tuple[Expr, ...] = ()   # an int input's values index tables of these sizes: each must be < all


@dataclass(frozen=True)
class Generate:
    tokens: str                # the caller input generation extends
    seq: str                   # its sequence: the one with the KV cache
    logits: str                # the output whose last position picks the next token
    start: Expr | None         # an encoder-decoder's first token (a config expression), or None
    cache_width: Expr | None = None   # KV-cache elements per row and position (an estimate), or None


@dataclass(frozen=True)
class Contract:
    inputs: tuple[Input, ...]
    masks: dict[str, str]      # keyword argument -> sequence
    outputs: tuple[str, ...]
    generate: Generate | None
    no_generate: str | None    # why not, when generate is None
    static: tuple[tuple[str, ...], ...]   # module paths run once per generation; "*" = every layer

    @property
    def callers(self) -> list[Input]:
        return [i for i in self.inputs if i.source == "caller"]


@dataclass(frozen=True)
class Quantization:
    """What the compiler's quantize pass decided: the config, and each quantized param's module path
    template (`layers.{i}.attn.qkv_proj`) with its role (runtime.quant.config.ROLES)."""
    config: QuantConfig
    params: dict[str, str]


@dataclass(frozen=True)
class ValueCheck:
    check: str                 # a runtime/value_checks.py CHECKS name
    value: Expr                # the attribute's value, over the config
    at: str                    # the spec line and the op's attribute, for the error


@dataclass(frozen=True)
class Interface:
    name: str
    doc: str
    source: str
    spec_sha256: str
    matches: dict[str, list[str]]
    base_prefix: str
    config: dict[str, ConfigEntry]
    checks: tuple[Check, ...]
    weights: tuple[WeightRule, ...]
    tensors: tuple[TensorRecord, ...]
    heads: dict[str, Head]
    contract: Contract
    quantization: Quantization | None = None
    value_checks: tuple[ValueCheck, ...] = ()
    loss: Loss | None = None      # the trunk's (a head brings its own)
    init: Init | None = None
    # keyword (inputs_embeds) -> (the int input it stands in for, the embedding module it replaces)
    embeddings: dict[str, tuple[str, str]] = None

    def input_embeddings(self) -> tuple[str, str] | None:
        """(input, embedding module) of the first caller input read through an embedding, or None."""
        by_input = {i: m for i, m in (self.embeddings or {}).values()}
        return next(((i.name, by_input[i.name]) for i in self.contract.callers if i.name in by_input), None)

    def head_for(self, architectures) -> str | None:
        """The head a config.json's `architectures` names, or None."""
        for arch in architectures or []:
            for head in self.heads.values():
                if arch in head.architectures:
                    return head.name
        return None

    def head_params(self, head: str) -> set[str]:
        """The top-level params (modules) a head adds to the model."""
        return {t.name.split(".", 1)[0] for t in self.tensors if t.head == head}


def read_interface(directory: str | Path) -> Interface:
    path = Path(directory) / INTERFACE
    try:
        data = read_json_object(path, ArtifactError)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; the artifact was not written by this compiler (compile again)") from None
    return parse_interface(data, str(path))


def parse_interface(data: Any, file: str = INTERFACE) -> Interface:
    r = _Reader(file)
    top = r.mapping(data, "")
    if r.get(top, "format", int, "") != FORMAT:
        r.fail("format", f"this runtime reads interface format {FORMAT}, the file is format {top.get('format')!r}")
    heads = {}
    for name, h in r.mapping(r.get(top, "heads", dict, ""), "heads").items():
        where = f"heads.{name}"
        heads[name] = Head(name, r.strings(r.get(h, "architectures", list, where), f"{where}.architectures"),
                           r.strings(r.get(h, "outputs", list, where), f"{where}.outputs"),
                           r.loss(h, where))
    return Interface(
        name=r.get(top, "name", str, ""), doc=r.get(top, "doc", str, ""), source=r.get(top, "source", str, ""),
        spec_sha256=r.get(top, "spec_sha256", str, ""),
        matches={k: list(r.strings(v, f"matches.{k}")) for k, v in r.mapping(r.get(top, "matches", dict, ""), "matches").items()},
        base_prefix=r.get(top, "base_prefix", str, ""),
        config={e.name: e for e in (r.config_entry(x, f"config[{i}]") for i, x in enumerate(r.get(top, "config", list, "")))},
        checks=tuple(Check(r.expr(r.get(c, "that", str, f"checks[{i}]"), f"checks[{i}].that"), r.get(c, "else", str, f"checks[{i}]"))
                     for i, c in enumerate(r.get(top, "checks", list, ""))),
        weights=tuple(r.weight_rule(x, f"weights[{i}]") for i, x in enumerate(r.get(top, "weights", list, ""))),
        tensors=tuple(r.tensor(x, f"tensors[{i}]") for i, x in enumerate(r.get(top, "tensors", list, ""))),
        heads=heads,
        contract=r.contract(r.get(top, "contract", dict, "")),
        quantization=r.quantization(r.get(top, "quantization", dict, "", optional=True, nullable=True)),
        value_checks=tuple(r.value_check(x, f"value_checks[{i}]")
                           for i, x in enumerate(r.get(top, "value_checks", list, "", optional=True) or ())),
        loss=r.loss(top, ""),
        init=r.init(top),
        embeddings={k: (r.get(v, "input", str, f"embeddings.{k}"), r.get(v, "module", str, f"embeddings.{k}"))
                    for k, v in r.mapping(r.get(top, "embeddings", dict, "", optional=True) or {}, "embeddings").items()},
    )


class _Reader:
    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, message: str):
        raise ArtifactError(f"{self.file}: {key or '(top level)'}: {message}")

    def mapping(self, value, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected a JSON object, got {type(value).__name__}")
        return value

    def get(self, obj, key: str, kind, where: str, optional: bool = False, nullable: bool = False):
        obj = self.mapping(obj, where)
        at = f"{where}.{key}" if where else key
        if key not in obj:
            if optional:
                return None
            self.fail(at, "missing")
        value = obj[key]
        if value is None and nullable:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(at, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__} {value!r}")
        return value

    def strings(self, value, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(where, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def expr(self, text, where: str) -> Expr:
        if not isinstance(text, str):
            self.fail(where, f"expected an expression (text), got {type(text).__name__} {text!r}")
        try:
            return parse_expr(text)
        except ExprError as err:
            self.fail(where, f"bad expression {text!r}: {err}")

    def maybe_expr(self, obj, key: str, where: str, optional: bool = False) -> Expr | None:
        text = self.get(obj, key, str, where, optional=optional, nullable=True)
        return None if text is None else self.expr(text, f"{where}.{key}")

    def choice(self, obj, key: str, choices, where: str) -> str:
        value = self.get(obj, key, str, where)
        if value not in choices:
            self.fail(f"{where}.{key}", f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def config_entry(self, x, where: str) -> ConfigEntry:
        name = self.get(x, "name", str, where)
        kind = self.choice(x, "type", CONFIG_TYPES, where)
        default = self.get(x, "default", dict, where, optional=True)
        value, has_default = None, default is not None
        if has_default:
            if set(default) == {"expr"}:
                value = self.expr(default["expr"], f"{where}.default.expr")
            elif set(default) == {"value"}:
                value = default["value"]
            else:
                self.fail(f"{where}.default", f"expected {{\"expr\": text}} or {{\"value\": literal}}, got {default!r}")
        return ConfigEntry(name, self.strings(self.get(x, "hf", list, where), f"{where}.hf"), kind, value,
                           has_default, self.get(x, "doc", str, where, optional=True) or "")

    def quantization(self, q) -> Quantization | None:
        if q is None:
            return None
        try:
            config = QuantConfig.from_dict(self.get(q, "config", dict, "quantization"), f"{self.file}: quantization.config")
        except ValueError as err:
            raise ArtifactError(str(err)) from None
        params = self.mapping(self.get(q, "params", dict, "quantization"), "quantization.params")
        for path, role in params.items():
            if role not in ROLES:
                self.fail(f"quantization.params.{path}", f"expected one of {', '.join(ROLES)}, got {role!r}")
        return Quantization(config, dict(params))

    def loss(self, obj, where: str) -> Loss | None:
        from runtime.loss_kinds import LOSS_KINDS
        x = self.get(obj, "loss", dict, where, optional=True, nullable=True)
        if x is None:
            return None
        at = f"{where}.loss" if where else "loss"
        kind = self.choice(x, "kind", tuple(LOSS_KINDS), at)
        options = self.mapping(self.get(x, "options", dict, at), f"{at}.options")
        return Loss(kind, self.strings(self.get(x, "outputs", list, at), f"{at}.outputs"),
                    {k: self.expr(v, f"{at}.options.{k}") for k, v in options.items()})

    def init(self, top) -> Init | None:
        x = self.get(top, "init", dict, "", optional=True, nullable=True)
        if x is None:
            return None
        params = {}
        for template, rule in self.mapping(self.get(x, "params", dict, "init"), "init.params").items():
            rule = self.mapping(rule, f"init.params.{template}")
            if len(rule) != 1 or next(iter(rule)) not in ("std", "value"):
                self.fail(f"init.params.{template}", f"expected {{\"std\": text}} or {{\"value\": text}}, got {rule!r}")
            (how, text), = rule.items()
            params[template] = (how, self.expr(text, f"init.params.{template}.{how}"))
        return Init(self.maybe_expr(x, "std", "init"), self.choice(x, "distribution", ("normal", "trunc_normal"), "init"),
                    self.maybe_expr(x, "norm", "init"), params)

    def transform(self, t, where: str):
        if t == "transpose":
            return t
        if not isinstance(t, dict) or len(t) != 1:
            self.fail(where, f"expected \"transpose\" or a one-key object, got {t!r}")
        (name, arg), = t.items()
        if name == "split":
            self.get(arg, "dim", int, f"{where}.split")
            sizes = self.get(arg, "sizes", list, f"{where}.split", optional=True)
            if sizes is None:
                return {"split": {"dim": arg["dim"]}}
            return {"split": {"dim": arg["dim"], "sizes": [self.expr(s, f"{where}.split.sizes[{i}]") for i, s in enumerate(sizes)]}}
        if name == "concat":
            self.get(arg, "dim", int, f"{where}.concat")
            return {"concat": {"dim": arg["dim"]}}
        if name == "reshape" and isinstance(arg, list):
            return {"reshape": [self.expr(s, f"{where}.reshape[{i}]") for i, s in enumerate(arg)]}
        if name == "permute" and isinstance(arg, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in arg):
            return {"permute": list(arg)}
        if name in ("stack", "unstack") and isinstance(arg, dict) and set(arg) <= {"over", "dim"}:
            self.get(arg, "over", str, f"{where}.{name}")
            return {name: {"over": arg["over"], "dim": self.get(arg, "dim", int, f"{where}.{name}", optional=True) or 0}}
        self.fail(where, f"unknown or malformed transform {t!r}")

    def weight_rule(self, x, where: str) -> WeightRule:
        return WeightRule(self.strings(self.get(x, "from", list, where), f"{where}.from"),
                          self.strings(self.get(x, "to", list, where), f"{where}.to"),
                          tuple(self.transform(t, f"{where}.transforms[{i}]")
                                for i, t in enumerate(self.get(x, "transforms", list, where))),
                          self.maybe_expr(x, "when", where), self.get(x, "ignore", str, where, nullable=True),
                          bool(self.get(x, "legacy", bool, where, optional=True)))

    def tensor(self, x, where: str) -> TensorRecord:
        repeat = []
        for i, pair in enumerate(self.get(x, "repeat", list, where)):
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str):
                self.fail(f"{where}.repeat[{i}]", f"expected [placeholder, count expression], got {pair!r}")
            repeat.append((pair[0], self.expr(pair[1], f"{where}.repeat[{i}][1]")))
        return TensorRecord(
            self.get(x, "name", str, where),
            tuple(self.expr(d, f"{where}.shape[{i}]") for i, d in enumerate(self.get(x, "shape", list, where))),
            tuple(self.expr(c, f"{where}.when[{i}]") for i, c in enumerate(self.get(x, "when", list, where))),
            self.get(x, "tied_to", str, where, nullable=True), self.maybe_expr(x, "tied_when", where), tuple(repeat),
            self.get(x, "head", str, where, nullable=True))

    def value_check(self, x, where: str) -> ValueCheck:
        return ValueCheck(self.choice(x, "check", tuple(CHECKS), where),
                          self.expr(self.get(x, "value", str, where), f"{where}.value"), self.get(x, "at", str, where))

    def contract(self, c) -> Contract:
        inputs = []
        for i, x in enumerate(self.get(c, "inputs", list, "contract")):
            where = f"contract.inputs[{i}]"
            inputs.append(Input(
                self.get(x, "name", str, where), self.choice(x, "dtype", DTYPES, where),
                tuple(self.expr(d, f"{where}.shape[{j}]") for j, d in enumerate(self.get(x, "shape", list, where))),
                self.choice(x, "source", SOURCES, where), self.get(x, "seq", str, where, nullable=True),
                self.get(x, "value", (int, float, bool), where, optional=True),
                tuple(self.expr(b, f"{where}.below[{j}]")
                      for j, b in enumerate(self.get(x, "below", list, where, optional=True) or ()))))
            if inputs[-1].source == "fill" and inputs[-1].value is None:
                self.fail(f"{where}.value", "a filled input needs its value")
            if inputs[-1].source != "caller" and inputs[-1].seq is None:
                self.fail(f"{where}.seq", f"a {inputs[-1].source} input needs the sequence it belongs to")
        names = {i.name for i in inputs}
        masks = self.mapping(self.get(c, "masks", dict, "contract"), "contract.masks")
        seqs = {i.seq for i in inputs if i.source == "caller"} - {None}
        for kwarg, seq in masks.items():
            if not isinstance(seq, str) or seq not in seqs:
                self.fail(f"contract.masks.{kwarg}", f"expected the sequence of a caller input ({', '.join(sorted(seqs))}), got {seq!r}")
        generate = self.get(c, "generate", dict, "contract", nullable=True)
        no_generate = None
        if generate is not None:
            g = generate
            generate = Generate(self.get(g, "tokens", str, "contract.generate"), self.get(g, "seq", str, "contract.generate"),
                                self.get(g, "logits", str, "contract.generate"),
                                self.maybe_expr(g, "start", "contract.generate"),
                                self.maybe_expr(g, "cache_width", "contract.generate", optional=True))
            if generate.tokens not in names:
                self.fail("contract.generate.tokens", f"{generate.tokens!r} is not an input of the contract")
        else:
            no_generate = self.get(c, "no_generate", str, "contract")
        static = tuple(self.strings(p, f"contract.static[{i}]") for i, p in enumerate(self.get(c, "static", list, "contract")))
        return Contract(tuple(inputs), dict(masks), self.strings(self.get(c, "outputs", list, "contract"), "contract.outputs"),
                        generate, no_generate, static)
