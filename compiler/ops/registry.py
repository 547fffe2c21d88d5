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

# Fusion kinds in the spirit of TVM's pattern kinds; the fusion pass decides from these alone.
FUSION_KINDS = ("elementwise", "broadcast", "injective", "reduction", "matmul", "attention", "opaque")


class ShapeError(Exception):
    """Raised by a shape rule; the checker adds the spec position."""


@dataclass(frozen=True)
class TType:
    """A tensor's static type: a symbolic shape (Exprs over config names and free dims) and a dtype class."""
    shape: tuple
    dtype: str = "float"      # "float" (the model's compute dtype), "int" or "bool"

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Attr:
    name: str
    type: str                  # "expr" (config expression), "enum", "bool"
    required: bool = False
    default: Any = None
    choices: tuple = ()
    doc: str = ""


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
    # only. None: true for the elementwise and broadcast kinds.
    positionwise: bool | None = None
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

    @property
    def per_position(self) -> bool:
        return self.fusion in ("elementwise", "broadcast") if self.positionwise is None else self.positionwise

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

    def expect_dtype(self, operand: str, dtype: str) -> TType:
        t = self.inputs[operand]
        if t.dtype != dtype:
            raise ShapeError(f"'{operand}' must be a {dtype} tensor, got {t}")
        return t


class EmitCtx:
    """What a lowering sees: Python source for each operand, param and attribute, each attribute's
    value where the compiler knows it (`const`), the node's KV-cache slot and sequence, and (outside
    fused groups) the operands' types and the params' declarations."""

    def __init__(self, values: dict[str, str], params: dict[str, str], attrs: dict[str, str], outputs: list[str],
                 consts: dict[str, Any] | None = None, slot: str | None = None, seq: str | None = None,
                 types: dict[str, TType] | None = None, param_decls: dict[str, Any] | None = None):
        self.values, self.params, self.attrs, self.outputs = values, params, attrs, outputs
        self.consts = consts or {}
        self.slot, self.seq = slot, seq
        self.types, self.param_decls = types or {}, param_decls or {}

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
