"""interface.json: everything the runtime needs from a spec, as plain JSON, so that loading an artifact
never reads the spec (nor imports the compiler).

Config entries, checks, weight rules, the model's tensors, the heads and the runtime contract
(compiler/contract.py). Every expression is its text in the expression language, which
`runtime.expr.parse_expr` reads back; the runtime validates the file (runtime/interface.py).
"""
from __future__ import annotations

from compiler.ir import ModelIR
from compiler.passes.quantize import quantized_params
from compiler.ops import OPS
from compiler.weight_rules import model_tensors
from runtime.expr import Expr
from runtime.interface import FORMAT
from runtime.rules import transform_name


def build_interface(ir: ModelIR, source: str) -> dict:
    """A pure function of the IR (the contract pass put the contract there)."""
    return {
        "format": FORMAT, "name": ir.name, "doc": ir.doc, "source": source, "spec_sha256": ir.sha256,
        "matches": {k: list(v) for k, v in ir.matches.items()},
        "base_prefix": ir.base_prefix,
        "config": [_config_entry(e) for e in ir.config.values()],
        "checks": [{"that": _text(c.that), "else": c.message} for c in ir.checks],
        "weights": [_weight_rule(r) for r in ir.weights],
        "tensors": [_tensor(t) for t in model_tensors(ir)],
        "heads": {name: {"architectures": list(h.architectures),
                         "outputs": [ir.blocks[h.block].values[o].name for o in ir.blocks[h.block].outputs],
                         "loss": _loss(ir.blocks[h.block].loss)}
                  for name, h in ir.heads.items()},
        "loss": _loss(ir.model.loss),
        "embeddings": _embeddings(ir),
        "init": _init(ir.init),
        "contract": ir.contract.to_json(),
        # the quantize pass (--quant): the loader quantizes these modules (runtime/quant/convert.py)
        "quantization": None if ir.quantization is None else {"config": ir.quantization,
                                                               "params": quantized_params(ir)},
        "value_checks": value_checks(ir),
    }


def value_checks(ir: ModelIR) -> list[dict]:
    """Each op attribute with a load-time check (`Attr.check`) once per distinct (check, value): the
    runtime runs it on the value the config gives (runtime/value_checks.py) before building anything."""
    out: dict[tuple, dict] = {}
    for block in ir.blocks.values():
        for node in block.ops():
            op = OPS.get(node.op)
            for attr in (op.attrs if op is not None else ()):
                value = node.attrs.get(attr.name)
                if attr.check is None or not isinstance(value, Expr):
                    continue
                out.setdefault((attr.check, str(value)), {"check": attr.check, "value": str(value),
                                                          "at": f"{node.loc}: {node.op} {attr.name}"})
    return list(out.values())


def embeds_kwarg(name: str) -> str:
    """Transformers' keyword for the embeddings standing in for a token input: input_ids ->
    inputs_embeds, decoder_input_ids -> decoder_inputs_embeds, anything else NAME_embeds."""
    return name.replace("input_ids", "inputs_embeds") if "input_ids" in name else f"{name}_embeds"


def _embeddings(ir: ModelIR) -> dict:
    """Per int model input read by an embedding-kind param: the keyword of the embeddings that may stand
    in for it, and that param (the module whose output they replace)."""
    out = {}
    for node in ir.model.ops():
        op = OPS.get(node.op)
        if op is None:
            continue
        for field, kind in op.params.items():
            param = ir.model.params.get(node.params.get(field))
            if kind != "embedding" or param is None:
                continue
            for vid in node.inputs.values():
                if vid in ir.model.inputs and ir.model.values[vid].type.dtype == "int":
                    name = ir.model.values[vid].name
                    out.setdefault(embeds_kwarg(name), {"input": name, "module": param.name})
    return out


def _loss(loss: dict | None) -> dict | None:
    if loss is None:
        return None
    return {"kind": loss["kind"], "outputs": list(loss["outputs"]),
            "options": {k: _text(v) for k, v in loss["options"].items()}}


def _init(init) -> dict | None:
    if init is None:
        return None
    return {"std": _text(init.std), "distribution": init.distribution, "norm": _text(init.norm),
            "params": {t: {how: _text(e)} for t, (how, e) in init.params.items()}}


def _text(expr) -> str | None:
    return None if expr is None else str(expr)


def _config_entry(e) -> dict:
    out = {"name": e.name, "hf": list(e.hf), "type": e.type, "doc": e.doc}
    if e.has_default:
        out["default"] = {"expr": str(e.default)} if isinstance(e.default, Expr) else {"value": e.default}
    return out


def _transform(t):
    name, arg = transform_name(t)
    if name == "split" and "sizes" in arg:
        return {"split": {"dim": arg["dim"], "sizes": [_text(s) for s in arg["sizes"]]}}
    if name == "reshape":
        return {"reshape": [_text(s) for s in arg]}
    return t


def _weight_rule(r) -> dict:
    return {"from": list(r.sources), "to": list(r.targets), "transforms": [_transform(t) for t in r.transforms],
            "when": _text(r.when), "ignore": r.ignore, "legacy": r.legacy}


def _tensor(t) -> dict:
    return {"name": t.name, "shape": [_text(d) for d in t.shape], "when": [_text(c) for c in t.when],
            "tied_to": t.tied_to, "tied_when": _text(t.tied_when) if t.tied_to else None,
            "repeat": [[var, _text(count)] for var, count in t.repeat], "head": t.head}
