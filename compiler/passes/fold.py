"""The fold_constants pass: attributes and param options without config names become constants.

Every later decision reads values (`printer.const_value`), never the text an author wrote: an
rms_norm `offset: 1 - 1` is the constant 0 and takes Llama's rounding order on every path, the
PyTorch code and the Triton kernel alike. Expressions over config names stay symbolic; what they
decide is decided when a checkpoint's config is known.
"""
from __future__ import annotations

from compiler.ir import ModelIR
from runtime.expr import Expr, ExprError, parse_expr


def fold(expr):
    if isinstance(expr, Expr) and expr.is_constant() and expr.kind != "const":
        try:
            return parse_expr(expr.evaluate({}))
        except ExprError:
            return expr        # e.g. 1 / 0: left as written; the op's shape rule or the runtime reports it
    return expr


def fold_constants(ir: ModelIR) -> None:
    for block in ir.blocks.values():
        for node in block.ops():
            node.attrs = {k: fold(v) for k, v in node.attrs.items()}
        for p in block.params.values():
            p.options = {k: fold(v) for k, v in p.options.items()}
            p.tied_when = fold(p.tied_when)
