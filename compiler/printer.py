"""Every text form of the IR, in one place: Python for model.py, the spec-like text of an op line
(reports, docstrings), the jaxpr-style dump, comments and literals.

Spec text reaches generated code only through `literal` (a Python string literal), `docstring` (a
string literal, triple-quoted only where that is safe) and `comment` (control characters escaped);
names reach it only after compiler.passes.names has checked them. Expressions are printed from our
own syntax tree (`Expr.to_python`), never pasted as text.
"""
from __future__ import annotations

import json

from runtime.expr import Expr

from compiler.conditions import describe
from compiler.ir import REGION, Block, ModelIR, Node

# In op attributes of repeated blocks: the layer's index, given to each layer's module when built.
LAYER_INDEX = "layer"
SHAPE_COLUMN = 72


class _Symbolic:
    """The value of an attribute that depends on the config: known only when a checkpoint is loaded."""

    def __repr__(self) -> str:
        return "SYMBOLIC"


SYMBOLIC = _Symbolic()


def const_value(expr):
    """The attribute's value when it is a compile-time constant (None when absent), else SYMBOLIC."""
    if expr is None:
        return None
    if isinstance(expr, Expr):
        return expr.evaluate({}) if expr.is_constant() else SYMBOLIC
    return expr


def py(expr) -> str:
    """A config expression as Python over `cfg` (the layer index over `self.layer`)."""
    if expr is None:
        return "None"
    if isinstance(expr, Expr):
        return expr.to_python(lambda n: "self.layer" if n == LAYER_INDEX else f"cfg.{n}")
    return repr(expr)


def literal(text: str) -> str:
    """A Python string literal whose value is exactly `text` (JSON's escaping is valid Python)."""
    return json.dumps(str(text))


def docstring(text: str) -> str:
    """A docstring literal for `text`: triple-quoted when nothing in it can end or escape the string."""
    text = str(text).strip()
    safe = ('"""' not in text and "\\" not in text and not text.endswith('"')
            and all(c == "\n" or c.isprintable() for c in text))
    return f'"""{text}"""' if safe else repr(text)


def comment(text: str) -> str:
    """`text` made safe for one line of a `#` comment: line breaks and control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def class_name(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def spec_text(block: Block, node: Node) -> str:
    """The op line as the author reads it: `h = rms_norm(x, w=attn_norm)`."""
    outs = ", ".join(block.values[o].name for o in node.outputs)
    args = [block.values[v].name for v in node.inputs.values()] + [f"{k}={v}" for k, v in node.params.items()]
    target = f"{node.op} {node.block}" if node.block else node.op
    return f"{outs} = {target}({', '.join(args)})"


def op_label(block: Block, node: Node) -> str:
    """`rms_norm(h)`: an op by what it computes, for one-line decisions."""
    return f"{node.op}({', '.join(block.values[o].name for o in node.outputs)})"


def shapes(block: Block, vids) -> str:
    return "; ".join(f"[{', '.join(str(d) for d in block.values[v].type.shape)}]" for v in vids)


def with_comment(line: str, note: str) -> str:
    return f"{line}{' ' * max(2, SHAPE_COLUMN - len(line))}# {comment(note)}"


def locs(nodes: list[Node]) -> str:
    """`llama.yaml:77` or `llama.yaml:77-78` (lines of one file) or a list."""
    seen = [n.loc for n in nodes if n.loc.line is not None]
    if not seen:
        return ""
    files = {l.file for l in seen}
    lines = sorted({l.line for l in seen})
    if len(files) == 1:
        name = str(seen[0]).rsplit(":", 1)[0]
        span = str(lines[0]) if len(lines) == 1 else (f"{lines[0]}-{lines[-1]}" if lines == list(range(lines[0], lines[-1] + 1))
                                                       else ",".join(map(str, lines)))
        return f"{name}:{span}"
    return ", ".join(dict.fromkeys(str(l) for l in seen))


def dump_block(ir: ModelIR, block: Block) -> str:
    """One line per node, jaxpr-style: `q: float[B, S, H*D] = linear(x, w=q_proj)`; a region as its
    members, indented under it."""
    sig = ", ".join(f"{v}: {block.values[v].type}" for v in block.inputs)
    head = {"model": "model", "head": "head", "block": "block"}[block.role]
    lines = [f"{head} {block.name}({sig}):"]
    quantized = [f"{p.name} ({p.quant})" for p in block.params.values() if p.quant is not None]
    if quantized:
        lines.append(f"  # quantized: {', '.join(quantized)}")
    for node in block.order():
        if node.op == REGION:
            r = node.region
            lines.append(f"  {', '.join(node.outputs)} = region {r.name}[{r.template}]({', '.join(r.inputs)}):")
            lines += [f"    {_dump_line(block, m)}" for m in r.nodes]
        else:
            lines.append(f"  {_dump_line(block, node)}")
    lines.append(f"  return {', '.join(block.outputs)}")
    return "\n".join(lines)


def _dump_line(block: Block, node: Node) -> str:
    outs = ", ".join(f"{o}: {block.values[o].type}" for o in node.outputs)
    args = [*node.inputs.values(), *(f"{k}={v}" for k, v in node.params.items()),
            *(f"{k}={v}" for k, v in node.attrs.items() if v is not None)]
    if node.seq:
        args.append(f"seq={node.seq}")
    target = f"{node.op}[{node.block}]" if node.block else node.op
    when = ""
    if node.when:    # `when c else q`: what each output is where the node does not run
        kept = ", ".join(node.orelse.get(o, "absent") for o in node.outputs)
        when = f" when {describe(node.when)} else {kept}"
    return f"{outs} = {target}({', '.join(map(str, args))}){when}"


def value_names(block: Block, units: list[Node], initial: list[str] | None = None) -> dict[str, str]:
    """Python names for values: the spec's names, except where moving fused ops together would let
    a rebinding shadow a value still to be read; those get a unique name (`x_1` for value `x.1`)."""
    marked: set[str] = set()
    while True:
        env = {}
        for vid in (block.inputs if initial is None else initial):
            if vid not in marked:
                env[block.values[vid].name] = vid
        changed = False
        for unit in units:
            for v in unit.reads:
                if v not in marked and env.get(block.values[v].name) != v:
                    marked.add(v)
                    changed = True
            for o in unit.outputs:
                if o not in marked:
                    env[block.values[o].name] = o
        if not changed:
            break
    taken = {v.name for v in block.values.values()}
    names = {}
    for vid, value in block.values.items():
        if vid in marked:
            name = vid.replace(".", "_")
            while name in taken:
                name += "_"
            names[vid] = name
        else:
            names[vid] = value.name
    return names
