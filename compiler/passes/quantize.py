"""The quantize pass (on with `--quant int8|int4` or a quantization_config): params whose weights are
read only by ops that declare them quantizable (`OpDef.quantizable`: a linear's weight, a grouped
linear's stacked experts, an embedding's table) are marked to be stored quantized, with their role:

- `linear`: read as x @ w.T;
- `lm_head`: such a linear whose rows are the rows of a token table (its output size is an
  embedding's row count, or it is tied to that embedding): the output embedding;
- `router`: such a linear with one output per expert of a grouped linear (a mixture of experts' router);
- `experts`: a grouped linear's weight [num, out, in], each expert's [out, in] quantized as a linear's;
- `embedding`: rows picked by ids (only with `quantize_embedding`).

`modules_to_not_convert` is applied here to each param's module path templates (`layers.{i}.mlp.down_proj`,
where `layers.*.mlp.*` matches and a pattern with a concrete index such as `layers.0.*` does not) and
to roles (`lm_head`); the runtime applies it again to concrete paths, so `layers.0.*` keeps layer 0 in
float. The marks reach model.py (a comment on the param's line) and interface.json (`quantization`:
the config and each quantized module path with its role), from which the loader quantizes.
"""
from __future__ import annotations

from compiler.ir import ModelIR, Param
from compiler.ops import OPS
from compiler.symbolic import same_value
from compiler.weight_rules import model_tensors
from runtime.quant.config import QuantConfig


def quantize(ir: ModelIR, option) -> None:
    config = QuantConfig.parse(option)
    roles = _roles(ir)
    paths = module_paths(ir)
    for (block, name), role in roles.items():
        param = ir.blocks[block].params[name]
        templates = paths.get((block, name), [])
        if config.admits(role) and not all(config.skipped(t, role) for t in templates):
            param.quant = role
    ir.quantization = config.to_dict()


def _reads(ir: ModelIR) -> dict[tuple[str, str], list[tuple[str, str] | None]]:
    """(block, param) -> how each op reading it does so: (role, rows dim), or None for a read that is
    not quantizable (a param read as a whole tensor)."""
    out: dict[tuple[str, str], list] = {}
    for block in ir.blocks.values():
        for node in block.ops():
            op = OPS.get(node.op)
            for field, name in node.params.items():
                out.setdefault((block.name, name), []).append(op.quantizable.get(field) if op else None)
    return out


def _roles(ir: ModelIR) -> dict[tuple[str, str], str]:
    """(block, param) -> role, for every param all of whose reads are quantizable in one way."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for key, reads in _reads(ir).items():
        if reads and None not in reads and len(set(reads)) == 1:
            found[key] = reads[0]
    tables = [(b, n, ir.blocks[b].params[n].dims[dim]) for (b, n), (role, dim) in found.items() if role == "embedding"]
    experts = [ir.blocks[b].params[n].dims["num"] for (b, n), (role, _) in found.items() if role == "experts"]
    roles = {}
    for (b, n), (role, dim) in found.items():
        p = ir.blocks[b].params[n]
        if role == "linear" and any(p.tied_to == tn or same_value(p.dims[dim], rows) for _, tn, rows in tables):
            role = "lm_head"
        elif role == "linear" and any(same_value(p.dims[dim], num) for num in experts):
            role = "router"
        roles[(b, n)] = role
    return roles


def module_paths(ir: ModelIR) -> dict[tuple[str, str], list[str]]:
    """(block, param) -> the module path templates it is built at (`layers.{i}.attn.q_proj`); a
    member of a fused param is built as that fused param."""
    out: dict[tuple[str, str], list[str]] = {}
    for t in model_tensors(ir):
        p = ir.blocks[t.block].params[t.param]
        prefix = t.name.removesuffix(f"{p.name}.{t.name.rsplit('.', 1)[1]}")     # "layers.{i}.attn."
        path = prefix + (p.fused_into or p.name)
        key = (t.block, p.fused_into or p.name)
        if path not in out.setdefault(key, []):
            out[key].append(path)
    return out


def quantized_params(ir: ModelIR) -> dict[str, str]:
    """Module path template -> role of every quantized module (for interface.json)."""
    out = {}
    for (block, name), paths in module_paths(ir).items():
        param = ir.blocks[block].params[name]
        if param.quant is not None:
            out.update({path: param.quant for path in paths})
    return out


def quant_note(param: Param, ir: ModelIR) -> str | None:
    """The note model.py prints beside a quantized param's construction."""
    if param.quant is None or ir.quantization is None:
        return None
    return f"quantized {QuantConfig.from_dict(ir.quantization).scheme_for(param.quant).name} ({param.quant})"
