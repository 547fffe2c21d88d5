"""The op reference, generated from the registry: `graphspec ops` (one line per op), `graphspec ops
NAME` (one op in full) and schemas/ops.md (every op; a test keeps the checked-in copy fresh:
`graphspec ops --markdown > schemas/ops.md`). Everything here is read off the OpDef entries."""
from __future__ import annotations

from compiler.ops import OPS
from compiler.ops.params import PARAM_KINDS
from compiler.ops.registry import Attr, OpDef

STRUCTURAL = ("`call` runs a sub-block (`{op: call, block: PARAM, INPUT: value, ...}`) and `repeat` runs a "
              "repeated block, each output feeding the input of the same name; they are part of the spec "
              "language, not of this table.")


def public_ops() -> list[OpDef]:
    """The ops a spec may write, by name."""
    return [OPS[n] for n in sorted(OPS) if not OPS[n].internal]


def signature(op: OpDef) -> str:
    """`topk(x, k, dim=-1, largest=true, sorted=true) -> 2 values`: operands (`?` optional), params,
    attributes (required ones bare, the others with their defaults), as a call."""
    args = [f"{o}?" if o in op.optional_operands else o for o in op.operands]
    args += [f"{p}: {kind}" for p, kind in op.params.items()]
    args += [a.name if a.required else f"{a.name}={_yaml(a.default)}" for a in op.attrs]
    outs = "" if op.outputs == 1 else f" -> {op.outputs} values"
    return f"{op.name}({', '.join(args)}){outs}"


def _lowered_by_default(op: OpDef) -> bool:
    """The op has a Triton form with its attributes' defaults (a required one counts as unset)."""
    return op.triton({a.name: a.default for a in op.attrs}) is not None if callable(op.triton) else True


def fusion_text(op: OpDef) -> str:
    lowered = "" if op.triton is None or _lowered_by_default(op) else "for some attribute values, "
    if op.triton is None:
        kernel = "runs in PyTorch"
    elif op.fusion == "reduction":
        kernel = f"{lowered}a row-reduction kernel over the last dim, with pointwise prologue and epilogue"
    elif op.fusion in ("elementwise", "broadcast"):
        kernel = f"{lowered}joins pointwise Triton kernels"
    else:
        kernel = f"{lowered}its own Triton kernel"
    extra = [k for k, on in (("reads the forward context", op.context), ("keeps a KV cache", op.kv_cache)) if on]
    if op.identity:
        extra.append("identity " + ", ".join(f"{f} = {v:g}" for f, v in op.identity.items()))
    return "; ".join([f"{op.fusion}: {kernel}", *extra])


def attr_text(a: Attr) -> str:
    kind = {"enum": " | ".join(map(str, a.choices)), "bool": "true or false", "dims": "list of expressions",
            "expr": "expression"}[a.type]
    default = "required" if a.required else "default null" if a.default is None else f"default {_yaml(a.default)}"
    return f"{a.name} ({kind}; {default})" + (f": {a.doc}" if a.doc else "")


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def op_lines() -> str:
    """`graphspec ops`: one line per op."""
    ops = public_ops()
    width = max(len(op.name) for op in ops)
    return "\n".join(f"{op.name:<{width}}  {signature(op)}: {op.doc}" for op in ops) + "\n"


def op_page(op: OpDef) -> str:
    """`graphspec ops NAME`: one op in full."""
    lines = [signature(op), "", op.doc, ""]
    lines.append("operands: " + (", ".join(f"{o}{' (optional)' if o in op.optional_operands else ''}"
                                            for o in op.operands) or "none"))
    for p, kind in op.params.items():
        lines.append(f"param {p}: a {kind} param ({PARAM_KINDS[kind].doc})")
    if op.attrs:
        lines.append("attributes:")
        lines += [f"  {attr_text(a)}" for a in op.attrs]
    lines += [f"shape: {op.shape_doc}", f"fusion: {fusion_text(op)}", "example:", f"  - {op.example}"]
    return "\n".join(lines) + "\n"


def markdown() -> str:
    ops = public_ops()
    out = ["# graphspec ops", "",
           "Generated from the op registry (`compiler/ops/`) by `graphspec ops --markdown`; a test fails while",
           "this copy is stale. `graphspec ops NAME` prints one entry. Operands are tensor values by name,",
           "attributes are literals or config expressions. Dtype classes: float (the model's dtype), fp32",
           "(float32 whatever the model's dtype), int (int64), bool.", "", STRUCTURAL, "",
           "| op | computes | fusion |", "| --- | --- | --- |"]
    out += [f"| [`{op.name}`](#{op.name}) | {_cell(op.doc)} | {op.fusion} |" for op in ops]
    for op in ops:
        out += ["", f"## {op.name}", "", f"`{signature(op)}`", "", _cell(op.doc), "",
                "- operands: " + (", ".join(f"`{o}`{' (optional)' if o in op.optional_operands else ''}"
                                            for o in op.operands) or "none")]
        out += [f"- param `{p}`: a `{kind}` param" for p, kind in op.params.items()]
        out += [f"- attribute {_cell(attr_text(a))}" for a in op.attrs]
        out += [f"- shape: {_cell(op.shape_doc)}", f"- fusion: {fusion_text(op)}", "", "```yaml",
                f"- {op.example}", "```"]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
