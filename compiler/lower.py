"""Lowering: `Spec` -> `ModelIR`, with every name, shape and dtype checked on the way.

Shapes are symbolic (config names and free dims such as B and S), so one artifact serves every
config of the family; two dims are equal when their expressions are (`compiler.symbolic.same_value`).
Problems are collected, not raised one by one, so an author sees all of them at once. The IR gets
everything later passes and emitters need — params, ties, heads as blocks, the config, checks and
weight rules — so nothing after this reads the `Spec`.
"""
from __future__ import annotations

import networkx as nx

from compiler.conditions import decide, describe
from compiler.errors import Problem, SpecError, did_you_mean
from compiler.ir import Block, Head, Loc, ModelIR, Node, Param, Value
from compiler.ops import OPS
from compiler.ops.registry import InferCtx, ShapeError, TType
from compiler.instantiate import Instances
from compiler.spec import FREE_DIM, LAYER_INDEX, BlockDecl, ParamDecl, Spec, describe_path
from compiler.symbolic import canonical, same_type, same_value
from runtime.expr import Expr, parse_expr


def lower(spec: Spec) -> ModelIR:
    lowering = _Lowering(spec)
    ir = lowering.run()
    if lowering.problems:
        # two instances of a block (block options) report a mistake of its text once
        raise SpecError(list({(p.file, p.line, p.column, p.message): p for p in lowering.problems}.values()))
    return ir


class _Lowering:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.problems: list[Problem] = []
        self.block_types: dict[str, tuple[dict[str, TType], list[TType]]] = {}
        self._problem_paths: list[tuple] = []
        self.layer_uses: dict[str, tuple] = {}    # block -> path of its first attribute using the layer index
        self._tie_scope: dict = {}       # params a head may tie to besides its own: the model's
        self.decls: dict[str, BlockDecl] = {}      # the instances (compiler/instantiate.py), by name

    def fail(self, path, message: str) -> None:
        self.problems.append(self.spec.problem(path, message))
        self._problem_paths.append(tuple(path))

    def run(self) -> ModelIR:
        spec = self.spec
        self.check_config()
        order, head_decls = [], {}
        spec_order = self.block_order()
        if spec_order is not None:
            instances = Instances(spec)
            self.problems += instances.problems
            self.decls, head_decls = instances.blocks, instances.heads
            # callees first, as the spec's blocks are; instances of one block in the order they were made
            rank = {b: i for i, b in enumerate(spec_order)}
            order = sorted(instances.order, key=lambda n: (rank.get(self.decls[n].source or n, len(rank)),
                                                           instances.order.index(n)))
        blocks = {}
        for name in order:
            blocks[name] = self.lower_block(self.decls[name], "model" if name == "model" else "block")
        heads = {}
        for name, head in spec.heads.items():
            if name in spec.blocks or name == "model":
                self.fail(head.path, f"head '{name}' has the name of a block; heads and blocks share one namespace")
                continue
            if name not in head_decls:
                continue
            block = self.lower_head(head, head_decls[name], blocks.get("model"))
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

    def lower_head(self, head, decl: BlockDecl, model: Block | None) -> Block | None:
        """A head is a block whose inputs are the model's outputs; its params join the model's."""
        if model is None or "model" not in self.block_types:
            return None
        from compiler.spec import InputDecl
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
                        self.fail(entry.path + ("default",), f"unknown config name '{name}' in default{did_you_mean(name, config)}")
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
            self.fail(path, f"unknown config name '{name}'{hint}{did_you_mean(name, self.spec.config)}")

    # -- blocks -------------------------------------------------------------------------------
    def block_order(self) -> list[str] | None:
        """The spec's blocks, callees before callers; unknown, cyclic and unused blocks are problems.
        None when blocks contain each other (then nothing can be instantiated)."""
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
                    self.fail(p.path + ("block",), f"unknown block '{p.block}'{did_you_mean(p.block, self.spec.blocks)}")
                else:
                    uses.add_edge(bname, p.block)
        cycles = list(nx.simple_cycles(uses))
        for cycle in cycles:
            self.fail(decls[cycle[0]].path, f"blocks contain each other: {' -> '.join(cycle + cycle[:1])}")
        if cycles:
            return None
        reachable = nx.descendants(uses, "model") | {"model"}
        for bname, decl in self.spec.blocks.items():
            if bname not in reachable:
                self.fail(decl.path, f"block '{bname}' is never used by the model")
        return [b for b in reversed(list(nx.topological_sort(uses))) if b in reachable]

    def lower_block(self, decl: BlockDecl, role: str, inputs_optional: bool = False) -> Block:
        st = _BlockState(decl)
        params = {}
        for n, p in decl.params.items():
            conds = self.conditions(p.when, p.path + ("when",), decl.name)
            if conds is None:
                st.dropped[n] = p.when       # decided false: the param does not exist in this block
            else:
                params[n] = self.param(p, conds)
        block = Block(decl.name, role, doc=decl.doc, loc=self.loc(decl.path), params=params,
                      source=decl.source or decl.name, options=dict(decl.options))
        st.block = block
        for name, inp in decl.inputs.items():
            for i, d in enumerate(inp.shape):
                self.check_names(d, inp.path + (i,), dims_allowed=True)
            block.values[name] = Value(name, name, TType(inp.shape, inp.dtype))
            block.inputs.append(name)
            st.env[name] = name
            st.defined_at[name] = inp.path
        for p in decl.params.values():
            for key, expr in [*p.dims.items(), *p.options.items()]:
                self.check_names(expr, p.path + (key,))
            self.check_names(p.repeat, p.path + ("repeat",))
            self.check_names(p.tied_when, p.path + ("tied", "when"))
            if p.tied_to is not None and p.name in params:
                self.check_tie(decl, p)
        for index, line in enumerate(decl.graph):
            conds = self.conditions(line.when, line.path + ("when",), decl.name)
            if conds is None:
                # decided false (a constant, or a block option): the line is not part of this block
                st.skipped_params.update((f, line.path) for f in _param_fields(line) if f in decl.params)
                st.skipped_reads.update((st.env[v], line.path) for v in line.fields.values()
                                        if isinstance(v, str) and v in st.env)
                continue
            node = self.lower_line(st, line, index, conds)
            if node is None:
                self.poison(st, line)
                continue
            block.add(node)
            for vid, name in zip(node.outputs, line.outputs):
                if name in st.env and st.env[name] not in st.used:
                    self.fail(st.defined_at[name], f"value '{name}' is never used before it is redefined")
                st.env[name] = vid
                st.defined_at[name] = line.path
        for i, out in enumerate(decl.outputs):
            if out not in st.env:
                self.fail(decl.path + ("outputs", i), f"output '{out}' is not defined in the graph{did_you_mean(out, st.env)}")
                continue
            vid = st.env[out]
            if vid in st.exists_when:
                self.fail(decl.path + ("outputs", i), f"output '{out}' exists only when {_conj(st.exists_when[vid])}; "
                                                      "a block's outputs always exist")
            block.outputs.append(vid)
            st.used.add(vid)
        for name, vid in st.env.items():
            if vid not in st.used and not (inputs_optional and vid in block.inputs):
                what = "input" if vid in block.inputs else "value"
                if vid in st.skipped_reads:
                    self.fail(st.defined_at[name], f"{what} '{name}' is read only by lines whose `when` is false here "
                                                   f"({describe_path(st.skipped_reads[vid])}); give its line the same `when`")
                else:
                    self.fail(st.defined_at[name], f"{what} '{name}' is never used")
        for pname, p in decl.params.items():
            if pname in st.used_params or pname in st.dropped:
                continue
            if pname in st.skipped_params:
                self.fail(p.path, f"param '{pname}' is used only by lines whose `when` is false here "
                                  f"({describe_path(st.skipped_params[pname])}); give it the same `when`")
            else:
                self.fail(p.path, f"param '{pname}' is declared but no op uses it")
        block.loss = self.lower_loss(decl, block)
        clean = not any(v.type is POISON for v in block.values.values()) and not self.failed_before(decl)
        if decl.last_hidden is not None and clean:
            repeats = [n for n in block.nodes() if n.op == "repeat"]
            if decl.last_hidden not in st.env or len(repeats) != 1:
                self.fail(decl.path + ("last_hidden",), f"last_hidden names a value of a block with one repeat; "
                                                         f"'{decl.last_hidden}' in a block with {len(repeats)}")
            else:
                block.last_hidden = st.env[decl.last_hidden]
        if clean:
            self.block_types[decl.name] = ({n: block.values[n].type for n in block.inputs},
                                           [block.values[v].type for v in block.outputs])
        return block

    def conditions(self, expr: Expr | None, path, block: str) -> tuple | None:
        """A `when:` as its conjuncts, constants decided: () always, None never (decided false)."""
        if expr is not None:
            self.check_names(expr, path, layer_in=block)
        conds, problem = decide(expr)
        if problem:
            self.fail(path, problem)
        return conds

    def param(self, p, when: tuple = ()) -> Param:
        return Param(p.name, p.kind, dict(p.dims), dict(p.options), self.loc(p.path), block=p.block,
                     repeat=p.repeat, tied_to=p.tied_to, tied_when=p.tied_when, static=p.static, when=when)

    def check_layer_index_uses(self) -> None:
        """The layer index exists only under a repeat: a block using it must never be reached from
        the model through calls alone."""
        decls = self.decls
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
        """Ties share every tensor both params have; those must agree in shape."""
        target = decl.params.get(p.tied_to) or self._tie_scope.get(p.tied_to)
        if target is None:
            self.fail(p.path + ("tied", "to"), f"tied to unknown param '{p.tied_to}'{did_you_mean(p.tied_to, decl.params)}")
            return
        from compiler.weight_rules import shared_tensors
        shared, mismatched = shared_tensors(p, target)
        if mismatched or not shared:
            t = mismatched[0] if mismatched else "weight"
            from compiler.weight_rules import param_tensors
            mine = {n: s for n, s, _ in param_tensors(p)}
            theirs = {n: s for n, s, _ in param_tensors(target)}
            self.fail(p.path + ("tied",), f"cannot tie '{p.name}' to '{p.tied_to}': {t} shapes "
                                          f"{mine.get(t)} and {theirs.get(t)} differ")

    def lower_line(self, st: "_BlockState", line, index, conds: tuple) -> Node | None:
        decl, block, env = st.decl, st.block, st.env

        def value(field: str, name) -> str | None:
            if isinstance(name, str) and name in env and block.values[env[name]].type is POISON:
                st.used.add(env[name])
                return None
            if not isinstance(name, str) or name not in env:
                self.fail(line.path + (field,), f"undefined value '{name}'{did_you_mean(str(name), env)}")
                return None
            vid = env[name]
            st.used.add(vid)
            missing = [c for c in st.exists_when.get(vid, ()) if c not in conds]
            if missing:
                self.fail(line.path + (field,), f"value '{name}' exists only when {_conj(st.exists_when[vid])} "
                                                f"(it is defined under `when` at {describe_path(st.defined_at[name])}); "
                                                f"read it under the same `when`")
                return None
            return vid

        def param(field: str, pname) -> ParamDecl | None:
            if pname in st.dropped:
                self.fail(line.path + (field,), f"param '{pname}' does not exist here: its `when: {st.dropped[pname]}` "
                                                "is false; give this line the same `when`")
                return None
            p = decl.params.get(pname)
            if p is None or pname not in block.params:
                return p
            missing = [c for c in block.params[pname].when if c not in conds]
            if missing:
                self.fail(line.path + (field,), f"param '{pname}' exists only when {_conj(block.params[pname].when)}; "
                                                f"this line needs `when: {describe(block.params[pname].when)}`")
                return None
            return p

        out_ids = [self.fresh(block, o) for o in line.outputs]
        if line.op in ("call", "repeat"):
            node = self.lower_call(st, line, index, value, param, out_ids)
        else:
            node = self.lower_op(st, line, index, value, param, out_ids)
        if node is not None and conds:
            node.when = conds
            for vid, name in zip(node.outputs, line.outputs):
                old = env.get(name)
                if old is not None and old not in st.exists_when and same_type(block.values[old].type, block.values[vid].type):
                    node.orelse[vid] = old     # rebinding under `when`: elsewhere the name keeps its value
                    st.used.add(old)
                else:
                    st.exists_when[vid] = conds
        return node

    def lower_op(self, st: "_BlockState", line, index, value, param, out_ids) -> Node | None:
        decl, block = st.decl, st.block
        op = OPS[line.op]
        inputs, params, attrs = {}, {}, {}
        bad = False
        for field, kind in op.params.items():
            pname = line.fields[field]
            p = param(field, pname)
            if p is None:
                if pname not in st.dropped and pname not in decl.params:
                    self.fail(line.path + (field,), f"unknown param '{pname}'{did_you_mean(pname, decl.params)}")
                bad = True
            elif p.kind != kind:
                self.fail(line.path + (field,), f"'{line.op}' needs a {kind} param for '{field}', but '{pname}' is a {p.kind}")
                bad = True
            else:
                st.used_params.add(pname)
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

    def lower_call(self, st: "_BlockState", line, index, value, param, out_ids) -> Node | None:
        decl, block = st.decl, st.block
        pname = line.fields["block"]
        p = param("block", pname)
        if p is None or p.kind != "block":
            if pname not in st.dropped:
                self.fail(line.path + ("block",), f"'{pname}' is not a block param of '{decl.name}'{did_you_mean(str(pname), decl.params)}")
            return None
        st.used_params.add(pname)
        if (line.op == "repeat") != (p.repeat is not None):
            want = "repeat" if p.repeat is not None else "call"
            self.fail(line.path, f"'{pname}' is {'a repeated' if p.repeat is not None else 'a single'} block: use op '{want}'")
            return None
        if p.block not in self.block_types:
            return None   # the callee had problems of its own, already reported (outputs poisoned)
        in_types, out_types = self.block_types[p.block]
        callee = self.decls[p.block]
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

    def poison(self, st: "_BlockState", line) -> None:
        """A line that failed still defines its outputs, typed 'error', so later lines do not cascade."""
        for name in line.outputs:
            vid = self.fresh(st.block, name)
            st.block.values[vid] = Value(vid, name, POISON)
            st.env[name] = vid
            st.used.add(vid)
            st.defined_at[name] = line.path
        for value in line.fields.values():
            if isinstance(value, str) and value in st.env:
                st.used.add(st.env[value])
            if isinstance(value, str) and value in st.decl.params:
                st.used_params.add(value)

    @staticmethod
    def fresh(block: Block, name: str) -> str:
        if name not in block.values:
            return name
        n = 1
        while f"{name}.{n}" in block.values:
            n += 1
        return f"{name}.{n}"


POISON = TType((), "error")


class _BlockState:
    """What lowering one block keeps track of while it walks the graph."""

    def __init__(self, decl: BlockDecl):
        self.decl = decl
        self.block: Block | None = None
        self.env: dict[str, str] = {}              # spec name -> current value id
        self.used: set[str] = set()
        self.defined_at: dict[str, tuple] = {}
        self.used_params: set[str] = set()
        self.exists_when: dict[str, tuple] = {}    # value id -> the conditions it exists under
        self.dropped: dict[str, Expr] = {}         # params whose `when` is decided false -> that when
        self.skipped_params: dict[str, tuple] = {}  # params read by lines decided false -> such a line
        self.skipped_reads: dict[str, tuple] = {}   # values read by lines decided false -> such a line


def _param_fields(line) -> list[str]:
    """The param names a line reads (a call's block, an op's params)."""
    if line.op in ("call", "repeat"):
        return [line.fields.get("block")]
    op = OPS.get(line.op)
    return [line.fields.get(f) for f in op.params] if op is not None else []


def _conj(conds) -> str:
    return f"`{describe(conds)}`"


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
