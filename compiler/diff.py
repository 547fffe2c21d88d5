"""A semantic diff of two specs: what changes in the architecture, not in the text.

Both specs are compared resolved (after `extends`), as declarations: config entries by name, checks
by condition, weight rules by their `from`, blocks by name and then by role (the block a matched
block instantiates under the same param), op lines aligned per block by output name and op, with
attributes compared after the registry's defaults are filled in and expressions in normal form, so
`causal: true` written out or left to its default is no change. The result is plain data
(JSON-ready); `tools/diff_format.py` renders it.
"""
from __future__ import annotations

import difflib
from collections import Counter
from typing import Any

from compiler.ops import OPS
from compiler.spec import BlockDecl, OpLine, ParamDecl, Spec
from compiler.symbolic import canonical
from runtime.expr import Expr, parse_expr

# Past this many op-line changes in one block, or below this alignment ratio, a block is reported
# as rewritten (ops counted) rather than line by line.
MAX_LINE_CHANGES = 8
MIN_RATIO = 0.5


def _text(value) -> Any:
    if isinstance(value, Expr):
        return value.text
    return value


def _key(value) -> Any:
    """What two values are compared by: an expression's normal form, anything else as is."""
    if isinstance(value, Expr):
        try:
            return canonical(value)
        except Exception:   # canonical refuses some forms (comparisons on strings); text is a sound key
            return value.text
    return value


def _same(a, b) -> bool:
    return _key(a) == _key(b)


def diff_specs(a: Spec, b: Spec) -> dict:
    blocks = _diff_blocks(a, b)
    out = {
        "a": {"name": a.name, "file": a.file},
        "b": {"name": b.name, "file": b.file},
        "matches": _diff_matches(a.matches, b.matches),
        "config": _diff_config(a, b),
        "checks": _diff_checks(a, b),
        "blocks": blocks,
        "heads": _diff_heads(a, b),
        "weights": _diff_weights(a, b),
    }
    out["equal"] = not any(_nonempty(out[k]) for k in ("matches", "config", "checks", "blocks", "heads", "weights"))
    return out


def _nonempty(section) -> bool:
    if isinstance(section, dict):
        return any(_nonempty(v) for v in section.values())
    return bool(section)


# -- matches, config, checks -----------------------------------------------------------------------
def _diff_matches(a: dict, b: dict) -> dict:
    return {k: [a.get(k, []), b.get(k, [])] for k in ("model_type", "architectures") if a.get(k, []) != b.get(k, [])}


def _entry(e) -> dict:
    return {"hf": e.hf, "type": e.type, "default": _text(e.default) if e.has_default else "(required)"}


def _diff_config(a: Spec, b: Spec) -> dict:
    changed = []
    for name in a.config.keys() & b.config.keys():
        ea, eb = a.config[name], b.config[name]
        fields = {}
        if ea.hf != eb.hf:
            fields["hf"] = [ea.hf, eb.hf]
        if ea.type != eb.type:
            fields["type"] = [ea.type, eb.type]
        if ea.has_default != eb.has_default or not _same(ea.default, eb.default):
            fields["default"] = [_entry(ea)["default"], _entry(eb)["default"]]
        if fields:
            changed.append({"name": name, "changes": fields})
    order = list(b.config) + [n for n in a.config if n not in b.config]
    changed.sort(key=lambda c: order.index(c["name"]))
    return {"added": [{"name": n, **_entry(e)} for n, e in b.config.items() if n not in a.config],
            "removed": [{"name": n, **_entry(e)} for n, e in a.config.items() if n not in b.config],
            "changed": changed}


def _diff_checks(a: Spec, b: Spec) -> dict:
    ka = {_key(c.that): c for c in a.checks}
    kb = {_key(c.that): c for c in b.checks}
    return {"added": [{"that": c.that.text, "else": c.message} for k, c in kb.items() if k not in ka],
            "removed": [{"that": c.that.text, "else": c.message} for k, c in ka.items() if k not in kb],
            "changed": [{"that": c.that.text, "else": [ka[k].message, c.message]}
                        for k, c in kb.items() if k in ka and ka[k].message != c.message]}


# -- weights ---------------------------------------------------------------------------------------
def _rule(r) -> dict:
    out = {"from": r.sources if len(r.sources) > 1 else r.sources[0]}
    if r.ignore is not None:
        out["ignore"] = r.ignore
    else:
        out["to"] = r.targets if len(r.targets) > 1 else r.targets[0]
    if r.transforms:
        out["transforms"] = [_plain(t) for t in r.transforms]
    if r.when is not None:
        out["when"] = r.when.text
    return out


def _diff_weights(a: Spec, b: Spec) -> dict:
    ra = {tuple(r.sources): _rule(r) for r in a.weights}
    rb = {tuple(r.sources): _rule(r) for r in b.weights}
    changed = []
    for k in rb:
        if k in ra and ra[k] != rb[k]:
            fields = {f: [ra[k].get(f), rb[k].get(f)] for f in ("to", "transforms", "when") if ra[k].get(f) != rb[k].get(f)}
            changed.append({"from": rb[k]["from"], "changes": fields})
    return {"added": [r for k, r in rb.items() if k not in ra],
            "removed": [r for k, r in ra.items() if k not in rb],
            "changed": changed}


# -- blocks ----------------------------------------------------------------------------------------
def _decls(spec: Spec) -> dict[str, BlockDecl]:
    return {**spec.blocks, "model": spec.model}


def match_blocks(a: Spec, b: Spec) -> list[tuple[str, str]]:
    """Pairs of blocks that play the same part: same name, else instantiated by matched blocks
    under the same param name, else as the n-th unmatched block param of the same kind (single
    or repeated) of matched blocks."""
    da, db = _decls(a), _decls(b)
    pairs = {n: n for n in da if n in db}
    changed = True
    while changed:
        changed = False
        for pa, pb in list(pairs.items()):
            free_b = set(db) - set(pairs.values())
            subs_a = [p for p in da[pa].params.values() if p.kind == "block" and p.block not in pairs]
            subs_b = [p for p in db[pb].params.values() if p.kind == "block" and p.block in free_b]
            for p in list(subs_a):
                q = next((q for q in subs_b if q.name == p.name), None)
                if q is not None and p.block not in pairs:
                    pairs[p.block] = q.block
                    subs_a.remove(p)
                    subs_b.remove(q)
                    changed = True
            for p in subs_a:
                q = next((q for q in subs_b if (q.repeat is None) == (p.repeat is None)), None)
                if q is not None and p.block not in pairs:
                    pairs[p.block] = q.block
                    subs_b.remove(q)
                    changed = True
    return list(pairs.items())


def _diff_blocks(a: Spec, b: Spec) -> dict:
    da, db = _decls(a), _decls(b)
    pairs = match_blocks(a, b)
    matched_b = {y: x for x, y in pairs}
    changed = []
    for name_b in db:
        if name_b not in matched_b:
            continue
        name_a = matched_b[name_b]
        entry = _diff_block(da[name_a], db[name_b])
        if entry or name_a != name_b:
            changed.append({"block": name_b, **({"was": name_a} if name_a != name_b else {}), **entry})
    return {"added": [_block_summary(db[n]) for n in db if n not in matched_b],
            "removed": [_block_summary(da[n]) for n in da if n not in dict(pairs)],
            "changed": changed}


def _diff_heads(a: Spec, b: Spec) -> dict:
    """Heads pair by name; a head is a block over the model's outputs plus the architectures it serves."""
    changed = []
    for name, hb in b.heads.items():
        ha = a.heads.get(name)
        if ha is None:
            continue
        entry = _diff_block(ha.block, hb.block)
        if ha.architectures != hb.architectures:
            entry = {"architectures": [ha.architectures, hb.architectures], **entry}
        if entry:
            changed.append({"head": name, **entry})
    out = {"added": [{"architectures": h.architectures, **_block_summary(h.block)}
                     for n, h in b.heads.items() if n not in a.heads],
           "removed": [{"architectures": h.architectures, **_block_summary(h.block)}
                       for n, h in a.heads.items() if n not in b.heads],
           "changed": changed}
    if a.base_prefix != b.base_prefix:
        out["base_prefix"] = [a.base_prefix, b.base_prefix]
    return out


def _block_summary(decl: BlockDecl) -> dict:
    return {"name": decl.name, "params": list(decl.params), "ops": dict(Counter(line.op for line in decl.graph))}


def _diff_block(a: BlockDecl, b: BlockDecl) -> dict:
    out: dict = {}
    inputs = _diff_named({n: _input(i) for n, i in a.inputs.items()}, {n: _input(i) for n, i in b.inputs.items()})
    if _nonempty(inputs):
        out["inputs"] = inputs
    params = _diff_named({n: _param(p) for n, p in a.params.items()}, {n: _param(p) for n, p in b.params.items()})
    if _nonempty(params):
        out["params"] = params
    ops = _diff_ops(a.graph, b.graph)
    if _nonempty({k: v for k, v in ops.items() if k not in ("ratio", "summary")}):
        out["ops"] = ops
    if a.outputs != b.outputs:
        out["outputs"] = [a.outputs, b.outputs]
    options = _diff_named({n: {"default": v} for n, v in a.options.items()},
                          {n: {"default": v} for n, v in b.options.items()})
    if _nonempty(options):
        out["options"] = options
    if _generate(a.generate) != _generate(b.generate):
        out["generate"] = [_generate(a.generate), _generate(b.generate)]
    return out


def _input(i) -> dict:
    return {"shape": [d.text for d in i.shape], "dtype": i.dtype, **i.roles}


def _generate(g) -> dict | None:
    return None if g is None else {"tokens": g.tokens, "logits": g.logits, "start": _text(g.start)}


def _param(p: ParamDecl) -> dict:
    if p.kind == "block":
        out = {"block": p.block}
        if p.repeat is not None:
            out["repeat"] = p.repeat
    else:
        out = {p.kind: [p.dims[d] for d in p.dims], **p.options}
    if p.tied_to:
        out["tied"] = {"to": p.tied_to, "when": p.tied_when}
    if p.when is not None:
        out["when"] = p.when
    if p.with_:
        out["with"] = dict(p.with_)
    return out


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return _text(value)


def _comparable(value):
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return _key(value)


def _diff_named(a: dict, b: dict) -> dict:
    changed = []
    for n in b:
        if n in a and _comparable(a[n]) != _comparable(b[n]):
            fields = {f: [_plain(a[n].get(f)), _plain(b[n].get(f))]
                      for f in dict.fromkeys([*a[n], *b[n]]) if _comparable(a[n].get(f)) != _comparable(b[n].get(f))}
            changed.append({"name": n, "changes": fields})
    return {"added": [{"name": n, **_plain(v)} for n, v in b.items() if n not in a],
            "removed": [{"name": n, **_plain(v)} for n, v in a.items() if n not in b],
            "changed": changed}


# -- op lines --------------------------------------------------------------------------------------
def _fields(line: OpLine) -> dict:
    """The line's fields with the op's attribute defaults filled in, so written-out defaults compare equal."""
    fields = dict(line.fields)
    op = OPS.get(line.op)
    if op is not None:
        for attr in op.attrs:
            if attr.name not in fields and attr.default is not None:
                d = attr.default
                fields[attr.name] = parse_expr(repr(d) if isinstance(d, str) else d)
            value = fields.get(attr.name)
            if attr.default is None and isinstance(value, Expr) and value.kind == "const" and value.value is None:
                del fields[attr.name]   # `softcap: null` written out is the default
    if line.when is not None:
        fields["when"] = line.when
    return fields


def line_text(line: OpLine) -> str:
    op = OPS.get(line.op)
    operands = op.operands if op is not None else ()
    args = [str(line.fields[o]) for o in operands if o in line.fields]
    args += [f"{k}={_text(v)}" for k, v in line.fields.items() if k not in operands]
    when = f" when {line.when}" if line.when is not None else ""
    return f"{', '.join(line.outputs)} = {line.op}({', '.join(args)}){when}"


def _line_key(line: OpLine) -> str:
    return f"{','.join(line.outputs)}={line.op}"


def _diff_ops(a: list[OpLine], b: list[OpLine]) -> dict:
    matcher = difflib.SequenceMatcher(None, [_line_key(x) for x in a], [_line_key(x) for x in b], autojunk=False)
    added, removed, changed = [], [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs = list(zip(a[i1:i2], b[j1:j2]))
        else:
            # Within a changed stretch, lines with the same op are the same line renamed or re-wired.
            pairs, rest_b = [], list(b[j1:j2])
            for x in a[i1:i2]:
                y = next((y for y in rest_b if y.op == x.op), None)
                if y is None:
                    removed.append(line_text(x))
                else:
                    rest_b.remove(y)
                    pairs.append((x, y))
            left = {id(y) for y in rest_b}
            added.extend(line_text(y) for y in b[j1:j2] if id(y) in left)
        for x, y in pairs:
            fa, fb = _fields(x), _fields(y)
            fields = {f: [_plain(fa.get(f)), _plain(fb.get(f))] for f in dict.fromkeys([*fa, *fb])
                      if _key(fa.get(f)) != _key(fb.get(f))}
            if x.outputs != y.outputs:
                fields["outputs"] = [", ".join(x.outputs), ", ".join(y.outputs)]
            if fields:
                changed.append({"line": line_text(y), "changes": fields})
    ratio = matcher.ratio()
    count_a, count_b = Counter(x.op for x in a), Counter(y.op for y in b)
    summary = {"lines": [len(a), len(b)], "rewritten": len(added) + len(removed) + len(changed) > MAX_LINE_CHANGES
               or ratio < MIN_RATIO, "ops_removed": dict(sorted((count_a - count_b).items())),
               "ops_added": dict(sorted((count_b - count_a).items()))}
    return {"added": added, "removed": removed, "changed": changed, "ratio": round(ratio, 3), "summary": summary}
