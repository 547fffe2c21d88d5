"""Block options and the instances they make: `{block: attention, with: {causal: false}}`.

A block may declare `options:` (name -> default, an expression over config names). Each use of the
block (a block param) may set them with `with:`. An instance is the block with its option values
substituted into every expression it holds: input shapes, param shapes, options and conditions, op
attributes, line conditions and the `with:` of the blocks it uses in turn, as a template's arguments
are. Uses whose values agree (after defaults, compared symbolically) share one instance; uses with
different values are separate instances, each its own IR block and emitted class, so whatever an
option decides is decided at compile time (a line under `when: not causal` is dropped from the causal
instance, kept in the other). The first instance of a block keeps its name, the others are named
`<block>_2`, `<block>_3`, ... in the order the model reaches them.
"""
from __future__ import annotations

import difflib
from dataclasses import replace

from compiler.errors import Problem
from compiler.spec import LAYER_INDEX, BlockDecl, ParamDecl, Spec
from compiler.symbolic import canonical
from runtime.expr import Expr


class Instances:
    """The instances the model and its heads reach, callees first, with every block param renamed
    to the instance it runs."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.blocks: dict[str, BlockDecl] = {}       # instance name -> decl (options substituted)
        self.order: list[str] = []                   # callees first
        self.heads: dict[str, BlockDecl] = {}        # head name -> its decl, params renamed
        self.problems: list[Problem] = []
        self._by_key: dict[tuple, str] = {}
        self._check_options()
        model = self._renamed(spec.model)
        for name, head in spec.heads.items():
            self.heads[name] = self._renamed(head.block)
        self.blocks["model"] = model
        self.order.append("model")

    def fail(self, path, message: str) -> None:
        self.problems.append(self.spec.problem(path, message))

    def _check_options(self) -> None:
        config = self.spec.config
        for decl in self.spec.blocks.values():
            for name, default in decl.options.items():
                path = decl.path + ("options", name)
                if name in config or name == LAYER_INDEX:
                    what = "the layer index" if name == LAYER_INDEX else "a config entry"
                    self.fail(path, f"option '{name}' of block '{decl.name}' has the name of {what}; "
                                    "options and config names share expressions, so they must differ")
                for n in sorted((default.names if default is not None else set()) - set(config)):
                    self.fail(path, f"the default of option '{name}' may use config names only; '{n}' is none")

    def _renamed(self, decl: BlockDecl) -> BlockDecl:
        """A copy of `decl` whose block params name the instances they run (made on the way)."""
        params = {}
        for pname, p in decl.params.items():
            if p.kind == "block" and p.block in self.spec.blocks:
                p = replace(p, block=self._instance(p))
            params[pname] = p
        return replace(decl, params=params)

    def _instance(self, use: ParamDecl) -> str:
        callee = self.spec.blocks[use.block]
        for key in use.with_:
            if key not in callee.options:
                known = ", ".join(callee.options) or "none"
                close = difflib.get_close_matches(key, list(callee.options), n=1)
                self.fail(use.path + ("with", key), f"block '{callee.name}' has no option '{key}' (its options: {known})"
                          + (f"; did you mean '{close[0]}'?" if close else ""))
        values = {o: use.with_.get(o, default) for o, default in callee.options.items()}
        key = (callee.name, tuple((o, canonical(v) if v is not None else None) for o, v in values.items()))
        if key in self._by_key:
            return self._by_key[key]
        name = self._fresh(callee.name)
        self._by_key[key] = name
        self.blocks[name] = None           # reserved while its callees are instantiated
        instance = self._renamed(substitute(callee, values, name))
        self.blocks[name] = instance
        self.order.append(name)
        return name

    def _fresh(self, base: str) -> str:
        taken = set(self.spec.blocks) | set(self.spec.heads) | set(self.blocks) | {"model"}
        if base not in self.blocks:
            return base
        k = 2
        while f"{base}_{k}" in taken:
            k += 1
        return f"{base}_{k}"


def _sub(expr, values: dict):
    return expr.substitute(values) if isinstance(expr, Expr) else expr


def substitute(decl: BlockDecl, values: dict[str, Expr | None], name: str) -> BlockDecl:
    """`decl` with its options replaced by `values` everywhere, named `name`."""
    exprs = {o: v for o, v in values.items() if v is not None}
    # an option whose value is null stands for the constant null
    exprs.update({o: Expr("const", None) for o, v in values.items() if v is None})
    inputs = {n: replace(i, shape=tuple(_sub(d, exprs) for d in i.shape)) for n, i in decl.inputs.items()}
    params = {n: replace(p, dims={k: _sub(v, exprs) for k, v in p.dims.items()},
                         options={k: _sub(v, exprs) for k, v in p.options.items()},
                         repeat=_sub(p.repeat, exprs), tied_when=_sub(p.tied_when, exprs), when=_sub(p.when, exprs),
                         with_={k: _sub(v, exprs) for k, v in p.with_.items()})
              for n, p in decl.params.items()}
    graph = [replace(line, fields={k: _sub(v, exprs) for k, v in line.fields.items()}, when=_sub(line.when, exprs))
             for line in decl.graph]
    return replace(decl, name=name, inputs=inputs, params=params, graph=graph, options=dict(exprs),
                   source=decl.name)
