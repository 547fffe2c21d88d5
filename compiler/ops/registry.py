"""The op registry: the closed set of primitives a spec may use.

An op is one `OpDef`: its operands (tensor values), the params it reads, its attributes, a shape
rule, a PyTorch lowering (a line of Python for the emitted `model.py`), the run-time function that
line calls (`run`, in runtime/ops) and its fusion kind. The
JSON Schema for op lines, the checker, the IR and the emitter all read this table, so adding an op
is one `register(...)` call and nothing else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.expr import Expr, parse_expr

# Fusion kinds in the spirit of TVM's pattern kinds; the fusion pass decides from these alone.
FUSION_KINDS = ("elementwise", "broadcast", "injective", "reduction", "matmul", "attention", "opaque")
# Dtype classes of values: "float" is the model's compute dtype (whatever a checkpoint is loaded in),
# "fp32" is float32 whatever that dtype (a step a spec keeps in full precision: a router's softmax,
# ALiBi slopes), "int" is int64, "bool" is bool. Arithmetic never mixes two classes silently: a cast says so.
FLOATS = ("float", "fp32")
DTYPES = ("float", "fp32", "int", "bool")


class ShapeError(Exception):
    """Raised by a shape rule; the checker adds the spec position."""


@dataclass(frozen=True)
class TType:
    """A tensor's static type: a symbolic shape (Exprs over config names and free dims) and a dtype class."""
    shape: tuple
    dtype: str = "float"      # one of DTYPES

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


class Dims(Expr):
    """A list of config expressions as one attribute value (`shape: [0, 0, num_heads, -1]`): names,
    folding, evaluation and printing work on it as on any expression, entry by entry."""

    __slots__ = ()

    def __init__(self, entries):
        entries = tuple(parse_expr(e) for e in entries)
        self.kind, self.value, self.args, self.prec = "dims", None, entries, 9
        self.text = "[" + ", ".join(e.text for e in entries) + "]"
        self.names = frozenset().union(*(e.names for e in entries))

    def evaluate(self, env):
        return tuple(e.evaluate(env) for e in self.args)

    def to_python(self, name=lambda n: n) -> str:
        return "(" + "".join(f"{e.to_python(name)}, " for e in self.args).rstrip(" ") + ")"

    def substitute(self, values):
        return Dims(e.substitute(values) for e in self.args)


@dataclass(frozen=True)
class Attr:
    name: str
    type: str                  # "expr" (config expression), "enum", "bool", "dims" (a list of expressions)
    required: bool = False
    default: Any = None
    choices: tuple = ()
    doc: str = ""
    # the load-time check of its value once the config is known (runtime/value_checks.py CHECKS)
    check: str | None = None


def along_features(attrs: dict, rank: int) -> bool:
    """An op along `dim` keeps positions apart when that dim comes after B and S ([B, S, ...])."""
    dim = attrs.get("dim")
    return isinstance(dim, int) and not isinstance(dim, bool) and rank > 2 and -rank <= dim < rank and dim % rank >= 2


DIM = Attr("dim", "expr", required=True, doc="the dim, negative from the end (a constant)")
LAST_DIM = Attr("dim", "expr", default=-1, doc="the dim, negative from the end (a constant)")


@dataclass(frozen=True)
class Parallel:
    """How an op's work splits across devices, for tensor parallelism (compiler/passes/shard.py).
    Dims are operand dims (negative: counted from the end); params are (param field, param dim name)."""
    # operand -> {operand dim: output dim}: slice i of the output along the output dim reads only
    # slice i of the operand along its dim (attention heads, a pointwise op's features)
    dims: dict[str, dict[int, int]] = field(default_factory=dict)
    # operand -> its dims (listed in `dims`) that may hold fewer slices than the output dim, each
    # serving a contiguous group of the output's (grouped-query attention's key/value heads)
    grouped: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # output dim -> the attribute that counts its slices (split_heads: `heads`; a dims attribute: its
    # entry at that output dim, reshape's `shape`); a split keeps them whole
    units: dict[int, str] = field(default_factory=dict)
    # a param dim the output carries as one of its dims (a linear's out features, an embedding's vectors)
    param_out: dict[tuple[str, str], int] = field(default_factory=dict)
    # a param dim summed against an operand dim (a linear's in features): split, each device holds a
    # partial sum of the output
    contracted: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    # a param dim whose rows an integer operand picks (an embedding's table): split, each device holds
    # the rows it has and zeros for the others, a partial sum of the output
    gathered: dict[tuple[str, str], str] = field(default_factory=dict)
    # an output dim read from no operand, any contiguous share of which the op computes: output dim ->
    # (the attribute counting its slices, the attribute holding the first one's index): ALiBi slopes
    shares: dict[int, tuple[str, str]] = field(default_factory=dict)
    # the internal op computing this one over a row-split table (its `start` attribute: the first row held)
    split_rows: str | None = None


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    operands: tuple[str, ...]                 # tensor inputs, by attribute name, in call order
    infer: Callable[["InferCtx"], list[TType]]
    emit: Callable[["EmitCtx"], str]
    params: dict[str, str] = field(default_factory=dict)   # attribute name -> required param kind
    attrs: tuple[Attr, ...] = ()
    outputs: int = 1
    fusion: str = "opaque"
    context: bool = False                     # reads the forward context (mask, KV cache)
    optional_operands: tuple[str, ...] = ()
    # Triton lowering for the fusion pass. Pointwise ops: an fp32 expression over operand and
    # attribute names ("{x} * tl.sigmoid({x})"), or a function of the attribute sources giving one;
    # row reductions, rotary and attention ops: the name
    # of their kernel template (compiler/triton/templates.py). None: the op never enters a kernel.
    triton: str | Callable[[dict], str] | None = None
    # Output position s (axis 1 of [B, S, ...]) depends on operand position s alone: linear, norms over
    # the last dim, pointwise ops. The keep_positions pass may run such an op on the last positions
    # only. None: true for the elementwise and broadcast kinds. A function of the node's attribute
    # values and its first operand's rank decides per node (an op along `dim`: per position when that
    # dim is past B and S, `along_features`).
    positionwise: bool | Callable[[dict, int], bool] | None = None
    internal: bool = False                    # inserted by a pass; not an op a spec may write
    # Capabilities generic code decides on (never on op names):
    kv_cache: bool = False                    # keeps keys/values per call site: gets a KV-cache slot
    # operand -> the value that makes the op return its other operand unchanged (add: 0 for either,
    # mul: 1): lets a pass defer the op into the next layer, starting from that value
    identity: dict[str, float] = field(default_factory=dict)
    # The run-time function the emitted code calls as `ops.<run>(...)` (runtime/ops); None for ops
    # that lower to plain torch code or to a param module's call.
    run: str | None = None
    # (operand, dim) that runs along a sequence, for ops of the context tied to one (its padding, its
    # past, its KV cache): the compiler resolves that dim to the model's sequence and emits `seq="S"`.
    sequence: tuple[str, int] | None = None
    # For the op reference (`graphspec ops`, schemas/ops.md): the shape rule in words, and one line of
    # a spec's graph using the op (a test validates every example against the schema).
    shape_doc: str = ""
    example: str = ""
    # How its work splits across devices (`Parallel`), or a function of the operands' ranks and the
    # attributes giving one. None: derived from the fusion kind (pointwise ops split along every dim
    # they broadcast over, row reductions along every dim but the last), else the op is never split.
    parallel: Parallel | Callable[[dict, dict], Parallel] | None = None
    # Param field -> (role, the param dim counting its weight's rows) for a param whose weight this op
    # reads in a way weight-only quantization keeps: role "linear" (x @ w.T, rows are output
    # features) or "embedding" (rows picked by ids). The quantize pass marks such params.
    quantizable: dict[str, tuple[str, str]] = field(default_factory=dict)

    def per_position(self, attrs: dict | None = None, rank: int = 0) -> bool:
        """Output position s depends on operand position s alone, for these attribute values
        (compile-time constants, printer.const_value) and an operand of this rank."""
        if callable(self.positionwise):
            return self.positionwise(attrs or {}, rank)
        return self.fusion in ("elementwise", "broadcast") if self.positionwise is None else self.positionwise

    def declared_parallel(self, ranks: dict[str, int], attrs: dict) -> Parallel | None:
        """The Parallel the op declares for operands of these ranks and these attributes (None: none
        declared; the shard pass then derives one from the fusion kind)."""
        return self.parallel(ranks, attrs) if callable(self.parallel) else self.parallel

    def attr(self, name: str) -> Attr | None:
        return next((a for a in self.attrs if a.name == name), None)

    @property
    def fields(self) -> list[str]:
        return [*self.operands, *self.params, *(a.name for a in self.attrs)]


class InferCtx:
    """What a shape rule sees: operand types, attribute Exprs, param declarations."""

    def __init__(self, op: OpDef, inputs: dict[str, TType], attrs: dict[str, Any], params: dict[str, Any]):
        self.op, self.inputs, self.attrs, self.params = op, inputs, attrs, params

    def __getitem__(self, operand: str) -> TType:
        return self.inputs[operand]

    def attr(self, name: str):
        return self.attrs.get(name)

    def param(self, name: str):
        return self.params[name]

    def expect_same(self, a, b, what: str) -> None:
        from compiler.symbolic import same_value
        if not same_value(a, b):
            raise ShapeError(f"{what}: {a} vs {b}")

    def expect_rank(self, operand: str, rank: int | tuple[int, ...]) -> TType:
        t = self.inputs[operand]
        ranks = (rank,) if isinstance(rank, int) else rank
        if len(t.shape) not in ranks:
            raise ShapeError(f"'{operand}' must have rank {' or '.join(map(str, ranks))}, got {t}")
        return t

    def expect_dtype(self, operand: str, dtype: str | tuple[str, ...]) -> TType:
        t = self.inputs[operand]
        allowed = (dtype,) if isinstance(dtype, str) else dtype
        if t.dtype not in allowed:
            kinds = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
            article = "an" if kinds.startswith("int") else "a"
            raise ShapeError(f"'{operand}' must be {article} {kinds} tensor, got {t}")
        return t

    def expect_float(self, operand: str) -> TType:
        """A float tensor: the model's dtype or explicit fp32."""
        return self.expect_dtype(operand, FLOATS)

    def const(self, attr: str, kinds: tuple = (int,), what: str = "an integer"):
        """An attribute whose value the shape depends on: it must be a constant of one of `kinds`."""
        e = self.attrs.get(attr)
        if e is None or not e.is_constant():
            raise ShapeError(f"'{attr}' must be a constant ({what}), got {e}")
        value = e.evaluate({})
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ShapeError(f"'{attr}' must be {what}, got {value!r}")
        return value

    def axis(self, attr: str, rank: int, extra: int = 0) -> int:
        """A dim attribute made non-negative (negative counts from the end, like torch); `extra`
        allows dims past the end (unsqueeze inserts one)."""
        d = self.const(attr)
        n = rank + extra
        if not -n <= d < n:
            raise ShapeError(f"'{attr}' is {d}, out of range for a rank-{rank} tensor")
        return d % n


class EmitCtx:
    """What a lowering sees: Python source for each operand, param and attribute, each attribute's
    value where the compiler knows it (`const`), the node's KV-cache slot and sequence, and (outside
    fused groups) the operands' types and the params' declarations."""

    def __init__(self, values: dict[str, str], params: dict[str, str], attrs: dict[str, str], outputs: list[str],
                 consts: dict[str, Any] | None = None, slot: str | None = None, seq: str | None = None,
                 exprs: dict[str, Any] | None = None, python: Callable[[Any], str] | None = None,
                 types: dict[str, TType] | None = None, param_decls: dict[str, Any] | None = None):
        self.values, self.params, self.attrs, self.outputs = values, params, attrs, outputs
        self.consts = consts or {}
        self.slot, self.seq = slot, seq
        self.exprs, self.python = exprs or {}, python
        self.types, self.param_decls = types or {}, param_decls or {}

    def entries(self, name: str) -> list[tuple[Any, str]]:
        """A dims attribute entry by entry: (its value when constant, else SYMBOLIC; its Python source)."""
        from compiler.printer import const_value
        return [(const_value(d), self.python(d)) for d in self.exprs[name].args]

    def type(self, operand: str) -> TType | None:
        """The operand's static type, where the emitter knows it (not inside a fused group's function)."""
        return self.types.get(operand)

    def param_decl(self, name: str):
        """The param's declaration (kind, dims, options), where the emitter knows it."""
        return self.param_decls.get(name)

    def __getitem__(self, operand: str) -> str:
        return self.values[operand]

    def p(self, name: str) -> str:
        return self.params[name]

    def a(self, name: str) -> str:
        return self.attrs[name]

    def const(self, name: str):
        """The attribute's value when it is a compile-time constant, else printer.SYMBOLIC."""
        return self.consts.get(name)

    def given(self, name: str) -> bool:
        """The attribute is set: not absent, not a constant null."""
        return self.consts.get(name) is not None

    def seq_arg(self) -> list[str]:
        """`seq="S"` for an op tied to a sequence the compiler resolved (compiler/contract.py), else nothing."""
        return [] if self.seq is None else [f"seq={json.dumps(self.seq)}"]


OPS: dict[str, OpDef] = {}
# Keys of a graph line besides its op's fields (compiler/spec.py reads them): no op may name a field so.
LINE_KEYS = ("op", "label", "when")


def register(op: OpDef) -> OpDef:
    if op.name in OPS:
        raise ValueError(f"op '{op.name}' registered twice")
    if op.fusion not in FUSION_KINDS:
        raise ValueError(f"op '{op.name}': unknown fusion kind '{op.fusion}'")
    taken = set(op.fields) & set(LINE_KEYS)
    if taken:
        raise ValueError(f"op '{op.name}': field(s) {sorted(taken)} are keys every graph line may carry")
    OPS[op.name] = op
    return op


def get(name: str) -> OpDef | None:
    return OPS.get(name)
