"""The runtime contract: how the runtime feeds a compiled model and what it reads back, derived from the
spec and the IR, so that the runtime itself knows no input, output or family name.

Per model input: its dtype, its sequence (the free dim at index 1, or none) and its source — `caller`
(the user passes it), `positions` / `key_positions` (supplied from the sequence's padding mask and
how many positions the KV cache already holds), `fill` (a constant when not passed). Per sequence:
the keyword argument of its padding mask. Then whether and how the model generates, which block
params run once per generation (`static`), and the outputs. For every op of the forward context
tied to a sequence (OpDef.sequence), the model-level sequence its operand runs along, followed
through the call and repeat bindings (a block's `S` may be the model's `S_ENC`).

Spec syntax (v2, all optional): on model inputs `mask: NAME`, `supplied: positions | key_positions`
(+ `of: INPUT`), `default: VALUE`; on the model `generate: {tokens, logits, start}`. A model input
that declares none of `mask`, `supplied`, `of`, `default` takes the row of its name in V1_ROLES
below, which is how specs written for v1 compile unchanged:

    input_ids          mask attention_mask
    position_ids       supplied positions
    token_type_ids     default 0
    decoder_input_ids  mask decoder_attention_mask; as generate's tokens, it starts from the config
                       entry decoder_start_token_id (0 when the config has no such entry)
    pixel_values       a caller input, float (what every input without a row is, as declared)

Without `generate:`, generate reads the rank-3 output along the sequence of a caller int input (the
one named `logits` when several are) and extends that input; a model with an attention along that
sequence that is not causal cannot generate, and the contract says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compiler.errors import Problem, SpecError
from compiler.ir import ModelIR
from compiler.ops import OPS
from compiler.spec import FREE_DIM
from runtime.expr import Expr

V1_ROLES: dict[str, dict] = {
    "input_ids": {"mask": "attention_mask"},
    "position_ids": {"supplied": "positions"},
    "token_type_ids": {"default": 0},
    "decoder_input_ids": {"mask": "decoder_attention_mask"},
    "pixel_values": {},
}
V1_START = {"decoder_input_ids": "decoder_start_token_id"}
V1_LOGITS = "logits"
# keyword arguments of the runtime's own, which a mask may not take
RESERVED_KWARGS = ("logits_to_keep", "max_new_tokens", "eos_token_id", "pad_token_id")


@dataclass
class Contract:
    inputs: list[dict]
    masks: dict[str, str]                       # keyword argument -> sequence
    outputs: list[str]
    generate: dict | None
    no_generate: str | None
    static: list[list[str]]
    # (block name, node id) -> the model-level sequence of a context op (None: no input sequence).
    sequences: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"inputs": self.inputs, "masks": self.masks, "outputs": self.outputs, "generate": self.generate,
               "static": self.static}
        if self.generate is None:
            out["no_generate"] = self.no_generate
        return out


def derive_contract(ir: ModelIR) -> None:
    """The derive_contract pass: ir.contract, and each context op's model-level sequence on its node
    (`node.seq`, which its emit function prints: `ops.attention(q, k, v, ctx, self, seq="S", ...)`).
    Bad declarations are a SpecError at their line."""
    deriver = _Deriver(ir)
    contract = deriver.run()
    if deriver.problems:
        raise SpecError(deriver.problems)
    ir.contract = contract
    for block in ir.blocks.values():
        for node in block.ops():
            node.seq = contract.sequences.get((block.name, node.id))


def _free_dim(dim) -> str | None:
    """The name of a dim that is a lone free dim (`S`), else None."""
    return dim.value if isinstance(dim, Expr) and dim.kind == "name" and FREE_DIM.match(dim.value) else None


class _Deriver:
    def __init__(self, ir: ModelIR):
        self.ir = ir
        self.problems: list[Problem] = []

    def fail(self, path, message: str) -> None:
        self.problems.append(self.ir.problem(path, message))

    def where(self, path) -> str:
        file, mark = self.ir.sources.locate(path)
        name = Path(file).name if file else "<spec>"
        return f"{name}:{mark[0]}" if mark else name

    def run(self) -> Contract:
        inputs, masks = self.inputs()
        sequences, along = self.op_sequences()
        generate, reason = self.generate(inputs, along)
        self.check_encoder_keys(along, generate)
        if generate is not None:
            width = self.cache_width(sequences, generate["seq"])
            if width is not None:
                generate["cache_width"] = width
        model = self.ir.model
        return Contract(inputs, masks, [model.values[o].name for o in model.outputs], generate, reason, self.static(),
                        sequences)

    # -- inputs -------------------------------------------------------------------------------------
    def roles(self, decl) -> dict:
        declared = decl.roles
        if not declared:
            return dict(V1_ROLES.get(decl.name, {}))
        if "of" in declared and declared.get("supplied") is None:
            self.fail(decl.path + ("of",), "'of' says whose sequence supplied positions count; it goes with 'supplied'")
        if declared.get("supplied") is not None and declared.get("default") is not None:
            self.fail(decl.path + ("default",), "an input is either supplied (positions) or filled with a default, not both")
        if declared.get("mask") is not None and (declared.get("supplied") is not None or declared.get("default") is not None):
            self.fail(decl.path + ("mask",), "a padding mask belongs on an input the caller passes, not on a supplied one")
        return {k: v for k, v in declared.items() if v is not None}

    def inputs(self) -> tuple[list[dict], dict[str, str]]:
        decls = self.ir.model_inputs
        roles = {name: self.roles(d) for name, d in decls.items()}
        own = {name: _free_dim(d.shape[1]) if len(d.shape) >= 2 else None for name, d in decls.items()}
        caller = [n for n in decls if "supplied" not in roles[n] and "default" not in roles[n]]
        caller_seqs = list(dict.fromkeys(own[n] for n in caller if own[n] is not None))
        records, masks, mask_of = [], {}, {}
        for name, d in decls.items():
            r = roles[name]
            record = {"name": name, "dtype": d.dtype, "shape": [str(x) for x in d.shape], "source": "caller",
                      "seq": own[name]}
            if "supplied" in r:
                record["source"] = r["supplied"]
                record["seq"] = self.supplied_seq(d, r, own, caller, caller_seqs)
            elif "default" in r:
                record["source"] = "fill"
                record["value"] = self.fill_value(d, r["default"], own[name], caller_seqs)
            if "mask" in r:
                self.mask(d, r["mask"], own[name], masks, mask_of, decls)
            below = self.index_bounds(self.ir.model, self.input_value(name)) if d.dtype == "int" else []
            if below:
                record["below"] = list(dict.fromkeys(str(b) for b in below))
            records.append(record)
        return records, masks

    def input_value(self, name: str) -> str:
        model = self.ir.model
        return next(v for v in model.inputs if model.values[v].name == name)

    def index_bounds(self, block, vid: str, seen: frozenset = frozenset()) -> list[Expr]:
        """The sizes of the param dims whose rows the int value `vid` picks (an embedding's table,
        OpDef.parallel `gathered`), followed into the blocks it is passed to: the runtime refuses ids
        outside [0, each size) before they reach the gather."""
        if (block.name, vid) in seen:
            return []
        seen = seen | {(block.name, vid)}
        out: list[Expr] = []
        for node in block.users(vid):
            if node.block is not None:
                callee = self.ir.blocks[block.params[node.block].block]
                for inner, outer in node.inputs.items():
                    if outer == vid and inner in callee.values:
                        out += self.index_bounds(callee, inner, seen)
                continue
            op = OPS.get(node.op)
            if op is None:
                continue
            ranks = {f: len(block.values[v].type.shape) for f, v in node.inputs.items()}
            par = op.declared_parallel(ranks, node.attrs)
            for (field_, dim), operand in (par.gathered.items() if par is not None else ()):
                if node.inputs.get(operand) == vid and field_ in node.params:
                    size = block.params[node.params[field_]].dims.get(dim)
                    if isinstance(size, Expr):
                        out.append(size)
        return out

    def supplied_seq(self, decl, roles: dict, own: dict, caller: list[str], caller_seqs: list[str]) -> str | None:
        path = decl.path + ("supplied",)
        if decl.dtype != "int" or len(decl.shape) != 2:
            self.fail(path, f"supplied {roles['supplied']} are int [B, length]; '{decl.name}' is declared "
                            f"{decl.dtype}[{', '.join(map(str, decl.shape))}]")
            return None
        if "of" in roles:
            of = roles["of"]
            if of not in caller or own.get(of) is None:
                choices = [n for n in caller if own.get(n) is not None]
                self.fail(decl.path + ("of",), f"'of: {of}' must name a model input the caller passes that runs along "
                                               f"a sequence (here: {', '.join(choices) or 'none'})")
                return None
            seq = own[of]
        elif own[decl.name] in caller_seqs:
            seq = own[decl.name]
        elif len(caller_seqs) == 1:
            seq = caller_seqs[0]
        else:
            self.fail(path, f"whose positions? '{decl.name}' runs along no caller input's sequence and the caller "
                            f"passes {len(caller_seqs)} sequences ({', '.join(caller_seqs) or 'none'}): say 'of: INPUT'")
            return None
        if roles["supplied"] == "positions" and own[decl.name] != seq:
            self.fail(path, f"positions of sequence {seq} are [B, {seq}], '{decl.name}' is declared "
                            f"[{', '.join(map(str, decl.shape))}]")
        return seq

    def fill_value(self, decl, value, seq: str | None, caller_seqs: list[str]):
        path = decl.path + ("default",)
        if isinstance(value, bool) or (decl.dtype == "int" and not isinstance(value, int)):
            self.fail(path, f"the default of {decl.dtype} input '{decl.name}' must be a number of its type, got {value!r}")
        if seq is None or seq not in caller_seqs:
            self.fail(path, f"a default fills '{decl.name}' along the sequence of a caller input, but its dim 1 "
                            f"({decl.shape[1] if len(decl.shape) > 1 else 'none'}) is the sequence of no caller input")
        elif any(_free_names(d) for d in decl.shape[2:]):
            self.fail(path, f"a filled input's dims past [B, {seq}] must come from the config, '{decl.name}' is "
                            f"[{', '.join(map(str, decl.shape))}]")
        return value

    def mask(self, decl, name: str, seq: str | None, masks: dict, mask_of: dict, decls: dict) -> None:
        path = decl.path + ("mask",)
        if seq is None:
            self.fail(path, f"'{decl.name}' runs along no sequence (its dim 1 is not a free dim such as S), "
                            "so it has no padding to mask")
        elif name in decls or name in RESERVED_KWARGS:
            self.fail(path, f"mask '{name}' would shadow {'a model input' if name in decls else 'a runtime argument'}")
        elif name in masks and masks[name] != seq:
            self.fail(path, f"mask '{name}' is also the mask of sequence {masks[name]} (input '{mask_of[name]}'); "
                            f"'{decl.name}' runs along {seq}")
        elif seq in masks.values() and masks.get(name) != seq:
            other = next(k for k, v in masks.items() if v == seq)
            self.fail(path, f"sequence {seq} already has the mask '{other}' (input '{mask_of[other]}'); one mask per sequence")
        else:
            masks[name], mask_of[name] = seq, decl.name

    # -- sequences of the context ops ---------------------------------------------------------------
    def op_sequences(self) -> tuple[dict, list]:
        """(block key, node id) -> model-level sequence, and the (node, sequence) pairs."""
        uses: dict[str, list[tuple[dict | None, tuple | None]]] = {}
        walked: set = set()
        blocks: dict[str, tuple] = {}

        def walk(key, block, binding, use):
            uses.setdefault(key, []).append((binding, use))
            blocks[key] = block
            seen = (key, None if binding is None else tuple(sorted(binding.items(), key=lambda kv: kv[0])))
            if seen in walked:
                return
            walked.add(seen)
            for node in block.order():
                if node.block is None:
                    continue
                callee = block.params[node.block].block
                callee_ir, inner = self.ir.blocks[callee], {}
                for iname in callee_ir.inputs:
                    want = callee_ir.values[iname].type.shape
                    got = block.values[node.inputs[iname]].type.shape
                    for w, g in zip(want, got):
                        if _free_dim(w) is not None:
                            inner[w.value] = _resolve(g, binding)
                walk(callee, callee_ir, inner, node.loc.path)

        walk("model", self.ir.model, None, None)
        for head in self.ir.heads.values():
            walk(head.block, self.ir.blocks[head.block], None, None)
        sequences, along = {}, []
        for key, block in blocks.items():
            for node in block.order():
                op = OPS.get(node.op)
                if op is None or op.sequence is None or op.sequence[0] not in node.inputs:
                    continue
                operand, dim = op.sequence
                shape = block.values[node.inputs[operand]].type.shape
                found: dict = {}
                for binding, use in uses[key]:
                    found.setdefault(_resolve(shape[dim], binding) if dim < len(shape) else None, use)
                if len(found) > 1:
                    (a, ua), (b, ub) = list(found.items())[:2]
                    self.fail(node.loc.path, f"this {node.op} runs along {shape[dim]} of block '{key}', which is "
                                         f"{a or 'no input sequence'} where the block is used at {self.where(ua)} and "
                                         f"{b or 'no input sequence'} where it is used at {self.where(ub)}; the emitted "
                                         "block can run along one sequence only: use a block per sequence")
                seq = next(iter(found))
                sequences[(key, node.id)] = seq
                along.append((node, seq))
        return sequences, along

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, inputs: list[dict], along: list) -> tuple[dict | None, str | None]:
        decl = self.ir.generate
        by_name = {r["name"]: r for r in inputs}
        caller_int = [r for r in inputs if r["source"] == "caller" and r["dtype"] == "int" and r["seq"]]
        outputs = self.output_types()
        if decl is not None:
            return self.declared_generate(decl, by_name, outputs, along)
        candidates = [(name, shape) for name, shape in outputs.items()
                      if len(shape) == 3 and any(_free_dim(shape[1]) == r["seq"] for r in caller_int)]
        if not candidates:
            return None, "no output of rank 3 runs along the sequence of a caller int input (no logits to generate from)"
        named = [c for c in candidates if c[0] == V1_LOGITS]
        if not named and len(candidates) > 1:
            return None, (f"several outputs could be the logits ({', '.join(c[0] for c in candidates)}): "
                          "declare generate: {tokens: ..., logits: ...}")
        logits, shape = (named or candidates)[0]
        seq = _free_dim(shape[1])
        tokens = next(r for r in caller_int if r["seq"] == seq)["name"]
        start = None
        if tokens in V1_START:
            entry = V1_START[tokens]
            start = entry if entry in self.ir.config else "0"
        return self.generation(tokens, seq, logits, start, inputs, along)

    def declared_generate(self, decl, by_name: dict, outputs: dict, along: list):
        problems = len(self.problems)
        record = by_name.get(decl.tokens)
        if decl.tokens is None or record is None or record["source"] != "caller" or record["dtype"] != "int" \
                or record["seq"] is None:
            choices = [n for n, r in by_name.items() if r["source"] == "caller" and r["dtype"] == "int" and r["seq"]]
            self.fail(decl.path + ("tokens",), f"tokens must name a model input the caller passes, int, along a "
                                               f"sequence (here: {', '.join(choices) or 'none'}); got {decl.tokens!r}")
        shape = outputs.get(decl.logits)
        if shape is None or len(shape) != 3:
            self.fail(decl.path + ("logits",), f"logits must name a rank-3 output of the model "
                                               f"({', '.join(n for n, s in outputs.items() if len(s) == 3) or 'none'}); "
                                               f"got {decl.logits!r}")
        elif record is not None and _free_dim(shape[1]) != record["seq"]:
            self.fail(decl.path + ("logits",), f"logits '{decl.logits}' runs along {shape[1]}, the tokens "
                                               f"'{decl.tokens}' along {record['seq']}")
        start = None
        if decl.start is not None:
            unknown = sorted(n for n in decl.start.names if n not in self.ir.config)
            if unknown:
                self.fail(decl.path + ("start",), f"unknown config name(s) {', '.join(unknown)} in start")
            first = next((n for n, r in by_name.items() if r["source"] == "caller"), None)
            if first == decl.tokens:
                self.fail(decl.path + ("start",), f"with a start token generate takes the source as its first "
                                                  f"argument, but the first caller input is the tokens '{first}'")
            start = str(decl.start)
        if len(self.problems) > problems:
            return None, "the model's generate: declaration has errors"
        generate, reason = self.generation(decl.tokens, record["seq"], decl.logits, start, list(by_name.values()),
                                           along)
        if generate is None:
            self.fail(decl.path, f"generate is declared, but {reason}")
        return generate, reason

    def generation(self, tokens, seq, logits, start, inputs, along):
        for node, s in along:
            causal = node.attrs.get("causal")
            if s == seq and isinstance(causal, Expr) and causal.is_constant() and not causal.evaluate({}):
                return None, (f"it is a bidirectional encoder: the {node.op} at {self.where(node.loc.path)} runs along "
                              f"{seq} and is not causal")
        others = [r["name"] for r in inputs if r["source"] == "caller" and r["seq"] == seq and r["name"] != tokens]
        if others:
            return None, f"the caller input(s) {', '.join(others)} also run along {seq}, which generate cannot extend"
        return {"tokens": tokens, "seq": seq, "logits": logits, "start": start}, None

    def output_types(self) -> dict:
        block = self.ir.model
        return {block.values[v].name: block.values[v].type.shape for v in block.outputs}

    def check_encoder_keys(self, along: list, generate: dict | None) -> None:
        """`encoder_keys` (v1) must say what the shapes say: the keys run along an input sequence that
        is not the generated one. Otherwise it is ignored: the sequence decides masks and the cache."""
        generated = generate["seq"] if generate else None
        for node, seq in along:
            flag = node.attrs.get("encoder_keys")
            if not isinstance(flag, Expr) or not flag.is_constant():
                continue
            path = node.loc.path + ("encoder_keys",)
            if flag.evaluate({}) and (seq is None or seq == generated):
                what = "no input sequence" if seq is None else f"{seq}, the sequence generate extends"
                self.fail(path, f"encoder_keys: true, but the keys run along {what}")
            elif not flag.evaluate({}) and generated is not None and generate["start"] is not None \
                    and seq is not None and seq != generated:
                self.fail(path, f"the keys run along the encoder's sequence {seq}: say encoder_keys: true "
                                "(or leave encoder_keys out)")

    def cache_width(self, sequences: dict, seq: str) -> str | None:
        """Elements the KV cache holds per row and position of the generated sequence, as an expression
        over the config: each KV-caching op's keys without their batch and sequence dims, twice (keys
        and values of one size, an estimate), times the layers running it. generate refuses a length
        whose cache cannot fit before allocating it. None when a size is not a config expression."""
        counts = self.block_counts()
        terms = []
        for (key, nid), s in sequences.items():
            block = self.ir.blocks[key]
            node = block.node(nid) if block.graph.has_node(nid) else None
            op = OPS.get(node.op) if node is not None else None
            if s != seq or op is None or not op.kv_cache or key not in counts:
                continue
            operand, dim = op.sequence
            shape = block.values[node.inputs[operand]].type.shape
            dims = [d for i, d in enumerate(shape) if i not in (0, dim)]
            if any(_free_names(d) for d in dims):
                return None
            terms.append(" * ".join(["2", f"({counts[key]})", *(f"({d})" for d in dims)]))
        return " + ".join(terms) or None

    def block_counts(self) -> dict[str, str]:
        """Block -> how many times one forward runs it (its repeat counts multiplied down the calls, summed
        over the places it is called from), as text."""
        counts: dict[str, str] = {}

        def walk(block, count: str) -> None:
            key = block.name if block is not self.ir.model else "model"
            counts[key] = count if key not in counts else f"{counts[key]} + {count}"
            for node in block.order():
                if node.block is None:
                    continue
                p = block.params[node.block]
                inner = count if p.repeat is None else str(p.repeat) if count == "1" else f"({count}) * ({p.repeat})"
                walk(self.ir.blocks[p.block], inner)

        walk(self.ir.model, "1")
        return counts

    # -- static blocks ------------------------------------------------------------------------------
    def static(self) -> list[list[str]]:
        """Module paths (`*`: every layer of a repeat) of the block params that run once per generation."""
        out: list[list[str]] = []

        def walk(block, prefix: list[str]) -> None:
            for p in block.params.values():
                if p.kind != "block" or p.block not in self.ir.blocks:
                    continue
                path = prefix + [p.name] + (["*"] if p.repeat is not None else [])
                if p.static:
                    out.append(path)
                else:
                    walk(self.ir.blocks[p.block], path)

        walk(self.ir.model, [])
        return out


def _free_names(dim: Expr) -> set[str]:
    return {n for n in dim.names if FREE_DIM.match(n)}


def _resolve(dim, binding: dict | None) -> str | None:
    """The model-level sequence a block-local dim stands for (None: not a lone free dim of the model)."""
    name = _free_dim(dim)
    if name is None:
        return None
    return name if binding is None else binding.get(name)
