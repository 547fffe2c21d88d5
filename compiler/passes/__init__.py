"""The compiler as a list of named passes (after TVM Relax's `Sequential`): `lower` turns the Spec
into the IR, every later pass rewrites or checks that one IR in place. `graphspec compile`,
`graphspec validate`, `graphspec show --after PASS`, `--print-after PASS` and the tests all run a
prefix of this same list. `verify` runs after every pass when asked (the test suite always asks)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from compiler.contract import derive_contract
from compiler.errors import SpecError
from compiler.ir import ModelIR
from compiler.lower import lower
from compiler.names import check_names
from compiler.passes.defer import defer_carried_ops
from compiler.passes.expect_fused import check_expect_fused
from compiler.passes.fold import fold_constants
from compiler.passes.fusion import fuse
from compiler.passes.keep_positions import insert_keep_positions
from compiler.passes.quantize import quantize
from compiler.passes.kernels import select_kernels
from compiler.passes.shard import shard
from compiler.verify import verify as check
from compiler.weight_rules import check_rules


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[ModelIR], None]
    doc: str
    needs: str | None = None       # the compile option that must be on for it to run (e.g. "fuse")
    default: bool = True           # whether that option is on when not given
    takes_value: bool = False      # run(ir, value of the option): an option that is more than on/off


def _raising(check: Callable[[ModelIR], list]) -> Callable[[ModelIR], None]:
    """A check that returns problems, as a pass that raises them together."""
    def run(ir: ModelIR) -> None:
        problems = check(ir)
        if problems:
            raise SpecError(problems)
    return run


LOWER = "lower"
PASSES = [
    Pass("check_names", _raising(check_names), "every spec name that becomes a Python identifier is a safe one"),
    Pass("check_weight_rules", _raising(check_rules), "every rule lands on params, every param is fed"),
    Pass("fold_constants", fold_constants, "attributes without config names become constants"),
    Pass("derive_contract", derive_contract, "the runtime contract; each context op's model-level sequence"),
    Pass("shard", shard, "a tensor-parallel plan: split params, their collectives (--tp N)",
         needs="tp", default=False),
    Pass("quantize", quantize, "params read only as weights of linears (embeddings) marked to be stored quantized "
         "(--quant)", needs="quant", default=False, takes_value=True),
    Pass("defer_carried_ops", defer_carried_ops, "a layer's last op moves into the next layer, to fuse there",
         needs="fuse"),
    Pass("keep_positions", insert_keep_positions, "cut the model's per-position tail (logits_to_keep)"),
    Pass("fuse", fuse, "fused groups become region nodes", needs="fuse"),
    Pass("check_expect_fused", check_expect_fused, "the spec's expect_fused contracts hold", needs="fuse"),
    Pass("select_kernels", select_kernels, "a function and a Triton kernel per distinct region", needs="fuse"),
]
NAMES = [LOWER, *(p.name for p in PASSES)]


def enabled(options: dict | None = None) -> list[str]:
    """The names of the stages these compile options run, in order."""
    options = options or {}
    return [LOWER, *(p.name for p in PASSES if p.needs is None or options.get(p.needs, p.default))]


def verifying() -> bool:
    return os.environ.get("GRAPHSPEC_VERIFY", "") not in ("", "0")


def run_pipeline(spec, options: dict | None = None, until: str | None = None,
                 after: Callable[[str, ModelIR], None] | None = None, verify: bool | None = None) -> ModelIR:
    """Lower `spec` and run the passes the options enable, up to and including `until`.
    `after(name, ir)` sees the IR after each stage (for --print-after and tests)."""
    options = options or {}
    if until is not None and until not in NAMES:
        raise ValueError(f"unknown pass '{until}' (passes: {', '.join(NAMES)})")
    verify = verifying() if verify is None else verify
    ir = lower(spec)
    stages = [(LOWER, None)] + [(p.name, p) for p in PASSES if p.name in enabled(options)]
    for name, p in stages:
        if p is not None:
            p.run(ir, options[p.needs]) if p.takes_value else p.run(ir)
        if verify:
            check(ir, after=name)
        if after is not None:
            after(name, ir)
        if name == until:
            break
    return ir
