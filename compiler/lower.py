"""Lowering: `Spec` -> `ModelIR`, with every name, shape and dtype checked on the way.

Shapes are symbolic (config names and free dims such as B and S), so one artifact serves every
config of the family; two dims are equal when their expressions are (`compiler.symbolic.same_value`).
Problems are collected, not raised one by one, so an author sees all of them at once. The IR gets
everything later passes and emitters need — params, ties, heads as blocks, the config, checks and
weight rules — so nothing after this reads the `Spec`.
"""
from __future__ import annotations

import difflib

import networkx as nx

from compiler.errors import Problem, SpecError
from compiler.ir import Block, Head, Loc, ModelIR, Node, Param, Value
from compiler.ops import OPS
from compiler.ops.registry import InferCtx, ShapeError, TType
from compiler.spec import FREE_DIM, LAYER_INDEX, BlockDecl, Spec
from compiler.symbolic import canonical, same_value
from runtime.expr import Expr, parse_expr


def lower(spec: Spec) -> ModelIR:
    lowering = _Lowering(spec)
    ir = lowering.run()
    if lowering.problems:
        raise SpecError(lowering.problems)
    return ir


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class _Lowering:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.problems: list[Problem] = []
        self.block_types: dict[str, tuple[dict[str, TType], list[TType]]] = {}
        self._problem_paths: list[tuple] = []
        self.layer_uses: dict[str, tuple] = {}    # block -> path of its first attribute using the layer index
        self._tie_scope: dict = {}       # params a head may tie to besides its own: the model's

    def fail(self, path, message: str) -> None:
        self.problems.append(self.spec.problem(path, message))
        self._problem_paths.append(tuple(path))

    def run(self) -> ModelIR:
        spec = self.spec
        self.check_config()
        order = self.block_order()
        blocks = {}
        for name in order:
            blocks[name] = self.lower_block(spec.block(name), "model" if name == "model" else "block")
        heads = {}
        for name, head in spec.heads.items():
            if name in spec.blocks or name == "model":
                self.fail(head.path, f"head '{name}' has the name of a block; heads and blocks share one namespace")
                continue
            block = self.lower_head(head, blocks.get("model"))
            if block is not None:
                blocks[name] = block
                heads[name] = Head(name, list(head.architectures), name, self.loc(head.path))
        self.check_layer_index_uses()
        expect = [(entry, ("expect_fused", i)) for i, entry in enumerate(spec.data.get("expect_fused") or [])]
        return ModelIR(name=spec.name, doc=spec.doc, file=spec.file, sha256=spec.sha256, data=spec.data,
                       sources=spec.sources, config=spec.config, checks=spec.checks, weights=spec.weights,
                       matches=spec.matches, blocks=blocks, heads=heads, base_prefix=spec.base_prefix,
                       expect_fused=expect, model_inputs=dict(spec.model.inputs), generate=spec.model.generate,
                       init=self.check_init(spec.init))

    def check_init(self, init):
        if init is not None:
            for key in ("std", "norm"):
                self.check_names(getattr(init, key), init.path + (key,))
            for template, (how, expr) in init.params.items():
                self.check_names(expr, init.path + ("params", template, how))
        return init

    def lower_loss(self, decl: BlockDecl, block: Block) -> dict | None:
        """The block's `loss:` checked against its kind (runtime/loss_kinds.py) and the block's outputs."""
        loss = decl.loss
        if loss is None:
            return None
        from runtime.loss_kinds import LOSS_KINDS
        kind = LOSS_KINDS[loss.kind]
        names = [block.values[o].name for o in block.outputs]
        outputs = loss.outputs if loss.outputs is not None else names[:kind.outputs]
        for name in outputs:
            if name not in names:
                self.fail(loss.path + ("outputs",), f"loss reads '{name}', which is not an output ({', '.join(names)})")
        if len(outputs) != kind.outputs:
            self.fail(loss.path, f"loss '{loss.kind}' reads {kind.outputs} output(s), this block gives {len(outputs)}: "
                                 f"{', '.join(outputs)}")
        for key, expr in loss.options.items():
            if key not in kind.options:
                self.fail(loss.path + (key,), f"loss '{loss.kind}' takes no option '{key}'"
                                              + (f" (it takes: {', '.join(kind.options)})" if kind.options else ""))
            self.check_names(expr, loss.path + (key,))
        return {"kind": loss.kind, "outputs": list(outputs), "options": dict(loss.options)}

    def loc(self, path) -> Loc:
        file, mark = self.spec.sources.locate(path)
        return Loc(file, mark[0] if mark else None, tuple(path))

    def lower_head(self, head, model: Block | None) -> Block | None:
        """A head is a block whose inputs are the model's outputs; its params join the model's."""
        if model is None or "model" not in self.block_types:
            return None
        from compiler.spec import InputDecl
        decl = head.block
        for pname, p in decl.params.items():
            if pname in self.spec.model.params:
                self.fail(p.path, f"head param '{pname}' has the name of a model param; heads extend the model, so names must differ")
        decl.inputs = {}
        for vid in model.outputs:
            v = model.values[vid]
            decl.inputs[v.name] = InputDecl(v.name, v.type.shape, v.type.dtype, head.path)
        self._tie_scope = self.spec.model.params
        try:
            return self.lower_block(decl, "head", inputs_optional=True)
        finally:
            self._tie_scope = {}

    # -- config -------------------------------------------------------------------------------
    def check_config(self) -> None:
        config = self.spec.config
        deps = nx.DiGraph()
        for entry in config.values():
            deps.add_node(entry.name)
            if isinstance(entry.default, Expr):
                for name in entry.default.names:
                    if name not in config:
                        self.fail(entry.path + ("default",), f"unknown config name '{name}' in default{_suggest(name, config)}")
                    else:
                        deps.add_edge(name, entry.name)
        if LAYER_INDEX in config:
            self.fail(config[LAYER_INDEX].path, f"config name '{LAYER_INDEX}' is reserved: in a repeated block it is the layer index")
        for cycle in nx.simple_cycles(deps):
            first = config[cycle[0]]
            self.fail(first.path + ("default",), f"config defaults form a cycle: {' -> '.join(cycle + cycle[:1])}")
        for check in self.spec.checks:
            self.check_names(check.that, check.path + ("that",))

    def check_names(self, expr: Expr | None, path, dims_allowed: bool = False, layer_in: str | None = None) -> None:
        """`layer_in`: the block whose op attribute this is, where the layer index may be used."""
        if expr is None:
            return
        for name in expr.names:
            if name in self.spec.config or (dims_allowed and FREE_DIM.match(name)):
                continue
            if name == LAYER_INDEX and layer_in is not None:
                self.layer_uses.setdefault(layer_in, tuple(path))
                continue
            hint = " (free dims such as B or S are uppercase and only allowed in input shapes)" if FREE_DIM.match(name) else ""
            self.fail(path, f"unknown config name '{name}'{hint}{_suggest(name, self.spec.config)}")

    # -- blocks -------------------------------------------------------------------------------
    def block_order(self) -> list[str]:
        """Callees before callers; unknown, cyclic and unused blocks are problems."""
        uses = nx.DiGraph()
        uses.add_node("model")
        decls = self.spec.all_blocks()
        for head in self.spec.heads.values():
            # blocks a head instantiates are built with the model, so they count as used by it
            for p in head.block.params.values():
                if p.kind == "block" and p.block in self.spec.blocks:
                    uses.add_edge("model", p.block)
        for bname, decl in decls.items():
            uses.add_node(bname)
            for p in decl.params.values():
                if p.kind != "block":
                    continue
                if p.block not in self.spec.blocks:
                    self.fail(p.path + ("block",), f"unknown block '{p.block}'{_suggest(p.block, self.spec.blocks)}")
                else:
                    uses.add_edge(bname, p.block)
        cycles = list(nx.simple_cycles(uses))
        for cycle in cycles:
            self.fail(decls[cycle[0]].path, f"blocks contain each other: {' -> '.join(cycle + cycle[:1])}")
        if cycles:
            return []
        reachable = nx.descendants(uses, "model") | {"model"}
        for bname, decl in self.spec.blocks.items():
            if bname not in reachable:
                self.fail(decl.path, f"block '{bname}' is never used by the model")
        return [b for b in reversed(list(nx.topological_sort(uses))) if b in reachable]

    def lower_block(self, decl: BlockDecl, role: str, inputs_optional: bool = False) -> Block:
        block = Block(decl.name, role, doc=decl.doc, loc=self.loc(decl.path),
                      params={n: self.param(p) for n, p in decl.params.items()})
        env: dict[str, str] = {}          # spec name -> current value id
        used: set[str] = set()
        defined_at: dict[str, tuple] = {}
        for name, inp in decl.inputs.items():
            for i, d in enumerate(inp.shape):
                self.check_names(d, inp.path + (i,), dims_allowed=True)
            block.values[name] = Value(name, name, TType(inp.shape, inp.dtype))
            block.inputs.append(name)
            env[name] = name
            defined_at[name] = inp.path
        for p in decl.params.values():
            for key, expr in [*p.dims.items(), *p.options.items()]:
                self.check_names(expr, p.path + (key,))
            self.check_names(p.repeat, p.path + ("repeat",))
            self.check_names(p.tied_when, p.path + ("tied", "when"))
            if p.tied_to is not None:
                self.check_tie(decl, p)
        used_params: set[str] = set()
        for index, line in enumerate(decl.graph):
            node = self.lower_line(decl, block, line, index, env, used, used_params)
            if node is None:
                self.poison(decl, block, line, env, used, defined_at, used_params)
                continue
            block.add(node)
            for vid, name in zip(node.outputs, line.outputs):
                if name in env and env[name] not in used:
                    self.fail(defined_at[name], f"value '{name}' is never used before it is redefined")
                env[name] = vid
                defined_at[name] = line.path
        for i, out in enumerate(decl.outputs):
            if out not in env:
                self.fail(decl.path + ("outputs", i), f"output '{out}' is not defined in the graph{_suggest(out, env)}")
            else:
                block.outputs.append(env[out])
                used.add(env[out])
        for name, vid in env.items():
            if vid not in used and not (inputs_optional and vid in block.inputs):
                what = "input" if vid in block.inputs else "value"
                self.fail(defined_at[name], f"{what} '{name}' is never used")
        for pname, p in decl.params.items():
            if pname not in used_params:
                self.fail(p.path, f"param '{pname}' is declared but no op uses it")
        block.loss = self.lower_loss(decl, block)
        clean = not any(v.type is POISON for v in block.values.values()) and not self.failed_before(decl)
        if decl.last_hidden is not None and clean:
            repeats = [n for n in block.nodes() if n.op == "repeat"]
            if decl.last_hidden not in env or len(repeats) != 1:
                self.fail(decl.path + ("last_hidden",), f"last_hidden names a value of a block with one repeat; "
                                                         f"'{decl.last_hidden}' in a block with {len(repeats)}")
            else:
                block.last_hidden = env[decl.last_hidden]
        if clean:
            self.block_types[decl.name] = ({n: block.values[n].type for n in block.inputs},
                                           [block.values[v].type for v in block.outputs])
        return block

    def param(self, p) -> Param:
        return Param(p.name, p.kind, dict(p.dims), dict(p.options), self.loc(p.path), block=p.block,
                     repeat=p.repeat, tied_to=p.tied_to, tied_when=p.tied_when, static=p.static)

    def check_layer_index_uses(self) -> None:
        """The layer index exists only under a repeat: a block using it must never be reached from
        the model through calls alone."""
        decls = self.spec.all_blocks()
        outside, todo = set(), ["model"]
        while todo:
            name = todo.pop()
            if name in outside or name not in decls:
                continue
            outside.add(name)
            todo += [p.block for p in decls[name].params.values() if p.kind == "block" and p.repeat is None]
        for name, path in self.layer_uses.items():
            if name in outside:
                where = "the model" if name == "model" else f"block '{name}', which the model reaches without a repeat"
                self.fail(path, f"'{LAYER_INDEX}' (the layer index) is used in {where}; it exists only inside repeated blocks")

    def failed_before(self, decl) -> bool:
        return any(path[:len(decl.path)] == decl.path for path in self._problem_paths)

    def check_tie(self, decl: BlockDecl, p) -> None:
        target = decl.params.get(p.tied_to) or self._tie_scope.get(p.tied_to)
        if target is None:
            self.fail(p.path + ("tied", "to"), f"tied to unknown param '{p.tied_to}'{_suggest(p.tied_to, decl.params)}")
            return
        from compiler.weight_rules import param_tensors
        mine = {t: s for t, s, _ in param_tensors(p)}
        theirs = {t: s for t, s, _ in param_tensors(target)}
        if "weight" not in mine or "weight" not in theirs or not all(
                same_value(a, b) for a, b in zip(mine["weight"], theirs["weight"])) or len(mine["weight"]) != len(theirs["weight"]):
            self.fail(p.path + ("tied",), f"cannot tie '{p.name}' to '{p.tied_to}': weight shapes "
                                          f"{mine.get('weight')} and {theirs.get('weight')} differ")

    def lower_line(self, decl, block, line, index, env, used, used_params) -> Node | None:
        def value(field: str, name) -> str | None:
            if isinstance(name, str) and name in env and block.values[env[name]].type is POISON:
                used.add(env[name])
                return None
            if not isinstance(name, str) or name not in env:
                self.fail(line.path + (field,), f"undefined value '{name}'{_suggest(str(name), env)}")
                return None
            used.add(env[name])
            return env[name]

        out_ids = [self.fresh(block, o) for o in line.outputs]
        if line.op in ("call", "repeat"):
            return self.lower_call(decl, block, line, index, value, out_ids, used_params)
        op = OPS[line.op]
        inputs, params, attrs = {}, {}, {}
        bad = False
        for field, kind in op.params.items():
            pname = line.fields[field]
            p = decl.params.get(pname)
            if p is None:
                self.fail(line.path + (field,), f"unknown param '{pname}'{_suggest(pname, decl.params)}")
                bad = True
            elif p.kind != kind:
                self.fail(line.path + (field,), f"'{line.op}' needs a {kind} param for '{field}', but '{pname}' is a {p.kind}")
                bad = True
            else:
                used_params.add(pname)
                params[field] = pname
        for operand in op.operands:
            if operand in line.fields:
                vid = value(operand, line.fields[operand])
                bad = bad or vid is None
                inputs[operand] = vid
        if bad:
            return None
        for attr in op.attrs:
            expr = line.fields.get(attr.name)
            if expr is None and attr.default is not None:
                expr = parse_expr(repr(attr.default) if isinstance(attr.default, str) else attr.default)
            if isinstance(expr, Expr):
                self.check_names(expr, line.path + (attr.name,), layer_in=decl.name)
            attrs[attr.name] = expr
        if len(line.outputs) != op.outputs:
            self.fail(line.path, f"'{line.op}' has {op.outputs} output(s), the line names {len(line.outputs)}")
            return None
        ctx = InferCtx(op, {f: block.values[v].type for f, v in inputs.items()}, attrs,
                       {f: decl.params[p] for f, p in params.items()})
        try:
            types = op.infer(ctx)
        except ShapeError as err:
            self.fail(line.path, f"{line.op}: {err}")
            return None
        for vid, name, t in zip(out_ids, line.outputs, types):
            block.values[vid] = Value(vid, name, TType(tuple(_simplify(d) for d in t.shape), t.dtype))
        return Node(f"n{index}", line.op, inputs, params, attrs, out_ids, self.loc(line.path), index)

    def lower_call(self, decl, block, line, index, value, out_ids, used_params) -> Node | None:
        pname = line.fields["block"]
        p = decl.params.get(pname)
        if p is None or p.kind != "block":
            self.fail(line.path + ("block",), f"'{pname}' is not a block param of '{decl.name}'{_suggest(str(pname), decl.params)}")
            return None
        used_params.add(pname)
        if (line.op == "repeat") != (p.repeat is not None):
            want = "repeat" if p.repeat is not None else "call"
            self.fail(line.path, f"'{pname}' is {'a repeated' if p.repeat is not None else 'a single'} block: use op '{want}'")
            return None
        if p.block not in self.block_types:
            return None   # the callee had problems of its own, already reported (outputs poisoned)
        in_types, out_types = self.block_types[p.block]
        callee = self.spec.blocks[p.block]
        args = {k: v for k, v in line.fields.items() if k != "block"}
        missing = [n for n in in_types if n not in args]
        extra = [n for n in args if n not in in_types]
        if missing or extra:
            self.fail(line.path, f"block '{p.block}' takes ({', '.join(in_types)})"
                                 + (f"; missing {', '.join(missing)}" if missing else "")
                                 + (f"; unknown {', '.join(extra)}" if extra else ""))
            return None
        inputs, binding = {}, {}
        for name, want in in_types.items():
            vid = value(name, args[name])
            if vid is None:
                return None
            got = block.values[vid].type
            problem = _unify(want, got, binding)
            if problem:
                self.fail(line.path + (name,), f"argument '{name}' of block '{p.block}': {problem}")
                return None
            inputs[name] = vid
        if line.op == "repeat":
            for i, out in enumerate(callee.outputs):
                if out not in in_types:
                    self.fail(callee.path + ("outputs", i), f"a repeated block's outputs feed its next layer, but '{out}' is not an input of '{p.block}'")
                    return None
        if len(line.outputs) != len(out_types):
            self.fail(line.path, f"block '{p.block}' returns {len(out_types)} value(s), the line names {len(line.outputs)}")
            return None
        for vid, name, t in zip(out_ids, line.outputs, out_types):
            shape = tuple(d.substitute(binding) for d in t.shape)
            block.values[vid] = Value(vid, name, TType(shape, t.dtype))
        return Node(f"n{index}", line.op, inputs, {}, {}, out_ids, self.loc(line.path), index, block=pname)

    def poison(self, decl, block, line, env, used, defined_at, used_params) -> None:
        """A line that failed still defines its outputs, typed 'error', so later lines do not cascade."""
        for name in line.outputs:
            vid = self.fresh(block, name)
            block.values[vid] = Value(vid, name, POISON)
            env[name] = vid
            used.add(vid)
            defined_at[name] = line.path
        for value in line.fields.values():
            if isinstance(value, str) and value in env:
                used.add(env[value])
            if isinstance(value, str) and value in decl.params:
                used_params.add(value)

    @staticmethod
    def fresh(block: Block, name: str) -> str:
        if name not in block.values:
            return name
        n = 1
        while f"{name}.{n}" in block.values:
            n += 1
        return f"{name}.{n}"


POISON = TType((), "error")


def _simplify(dim: Expr) -> Expr:
    """The dim in canonical form (`num_heads * head_dim // num_heads` -> `head_dim`), for readable shapes."""
    text = canonical(dim)
    return dim if text.startswith("<") else parse_expr(text)


def _unify(want: TType, got: TType, binding: dict) -> str | None:
    """Match a block's declared input type against an argument, binding the block's free dims."""
    if want.dtype != got.dtype:
        return f"expected a {want.dtype} tensor, got {got}"
    if len(want.shape) != len(got.shape):
        return f"expected rank {len(want.shape)} {want}, got {got}"
    for w, g in zip(want.shape, got.shape):
        if len(w.names) == 1 and FREE_DIM.match(w.text):
            if w.text in binding and not same_value(binding[w.text], g):
                return f"dim {w.text} is {binding[w.text]} elsewhere but {g} here"
            binding.setdefault(w.text, g)
        elif not same_value(w.substitute(binding), g):
            return f"expected {want}, got {got}"
    return None
