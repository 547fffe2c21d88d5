"""`compile_spec`: the whole compiler as one call, with the cache check first.

spec file -> Spec (schema + parse) -> IR (names, shapes, dtypes) -> weight-rule check -> passes ->
emitted files -> artifact directory. An unchanged spec compiled again with the same compiler,
torch, triton and options is a cache hit: only the key is computed, nothing is parsed or written.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from compiler import __version__
from compiler.artifact import check_target, clean_stale, is_complete, read_manifest, write_artifact
from compiler.emit import emit_model
from compiler.emit_kernels import emit_kernels, kernel_manifest
from compiler.extends import source_chain
from compiler.interface import build_interface
from compiler.ir import ModelIR
from compiler.parallel import explain_parallel, plan_json
from compiler.passes import run_pipeline
from compiler.passes.quantize import quantized_params
from compiler.report import explain, fusion_manifest
from compiler.spec import Spec, load_spec
from compiler.symbolic import canonical
from compiler.weight_rules import model_tensors
from compiler.yaml_source import read_source
from runtime.cache import cache_root
from runtime.expr import Expr, parse_expr


@dataclass
class CompileResult:
    directory: Path
    cache_hit: bool
    seconds: float
    manifest: dict
    ir: ModelIR | None = None
    spec: Spec | None = None
    notes: list[str] = field(default_factory=list)


@lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of the compiler's and the runtime's source: artifacts are stale when the code that wrote
    them, or the run-time library their model.py calls, changes."""
    digest = hashlib.sha256()
    root = Path(__file__).parent.parent
    for package in ("compiler", "runtime"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _package_version(name: str) -> str | None:
    # From the package metadata, not the module: importing torch is over half of a cold compile, and
    # importing triton here would fix its interpreter mode for the process.
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict:
    return {"graphspec": __version__, "torch": _package_version("torch"), "triton": _package_version("triton"),
            "python": platform.python_version()}


def compile_key(spec_bytes: bytes, options: dict, parents: list[bytes] | None = None) -> str:
    """`parents`: the bytes of every spec the file extends, nearest first; editing one changes the key."""
    key = {"spec": hashlib.sha256(spec_bytes).hexdigest(), "compiler": compiler_fingerprint(),
           "versions": versions(), "options": options}
    if parents:
        key["parents"] = [hashlib.sha256(b).hexdigest() for b in parents]
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_output(spec_name: str, key: str) -> Path:
    return cache_root() / "artifacts" / f"{spec_name}-{key[:16]}"


def compile_spec(spec_path: str | Path, output: str | Path | None = None, options: dict | None = None) -> CompileResult:
    start = time.perf_counter()
    spec_path = Path(spec_path)
    options = dict(options or {})
    spec_bytes = read_source(spec_path)
    chain = source_chain(spec_path, spec_bytes.decode("utf-8", "replace"))[1:]
    parents = [read_source(p) for p in chain]
    key = compile_key(spec_bytes, options, parents)
    target = Path(output) if output else default_output(spec_path.stem, key)
    if is_complete(target, key):
        clean_stale(target)
        if options.get("print_after"):
            # the artifact is current, but the IR the caller asked to see is only printed while passes run
            run_pipeline(load_spec(spec_path), options, after=options_printer(options))
        return CompileResult(target, True, time.perf_counter() - start, read_manifest(target))
    check_target(target)    # before the work: a target that is not ours is refused at once

    spec = load_spec(spec_path)
    ir = run_pipeline(spec, options, after=options_printer(options))
    kernels = emit_kernels(ir, spec_path.name)
    files = {
        "model.py": emit_model(ir, spec_path.name),
        "interface.json": json.dumps(build_interface(ir, spec_path.name), indent=1) + "\n",
        "spec.json": json.dumps({"source": spec_path.name, **({"extends": [p.name for p in chain]} if chain else {}),
                                 "spec": spec.data}, indent=1) + "\n",
        "ir.txt": ir.dump() + "\n",
        "fusion.txt": explain(ir) + "\n",
    }
    if kernels is not None:
        files["kernels.py"] = kernels
    if ir.parallel is not None:
        files["parallel.json"] = json.dumps(plan_json(ir.parallel), indent=1) + "\n"
        files["parallel.txt"] = explain_parallel(ir.parallel, int(options["tp"])) + "\n"
    manifest = {
        "name": spec.name, "key": key, "source": str(spec_path), "spec_sha256": hashlib.sha256(spec_bytes).hexdigest(),
        "parents": {str(p): hashlib.sha256(b).hexdigest() for p, b in zip(chain, parents)},
        "compiler_fingerprint": compiler_fingerprint(), "versions": versions(), "options": options,
        "ops": dict(sorted(Counter(n.op for b in ir.blocks.values() for n in b.ops()).items())),
        "blocks": [b.name for b in ir.trunk()], "params": param_formulas(ir), "fusion": fusion_manifest(ir),
        "kernels": kernel_manifest(ir),
        # values cut before the model's per-position tail (a forward may compute its last positions only)
        "keep_positions": ir.keep_positions,
    }
    if ir.quantization is not None:     # the quantize pass: module path template -> role
        manifest["quantized"] = quantized_params(ir)
    if ir.parallel is not None:     # the plan itself is parallel.json; its report parallel.txt
        manifest["tensor_parallel"] = {"ranks": int(options["tp"]), "split": len(ir.parallel.split),
                                       "collectives": len(ir.parallel.collectives)}
    if options.get("aot") and kernels is not None:
        manifest["kernels"] = aot_compile(kernels, manifest["kernels"], options["aot"])
    manifest["compile_seconds"] = round(time.perf_counter() - start, 4)
    write_artifact(target, files, manifest)
    return CompileResult(target, False, time.perf_counter() - start, read_manifest(target), ir, spec)


def options_printer(options: dict):
    """`print_after`: print the IR after that pass (graphspec compile --print-after PASS)."""
    wanted = options.get("print_after")
    if not wanted:
        return None

    def after(name: str, ir: ModelIR) -> None:
        if name == wanted:
            print(f"# IR after {name}\n{ir.dump()}")
    return after


def param_formulas(ir: ModelIR) -> dict:
    """Each param's element count as a formula over config names, and the total."""
    out, total = {}, []
    for t in model_tensors(ir):
        count = _balanced("*", [*(parse_expr(n) for _, n in t.repeat), *(parse_expr(d) for d in t.shape)])
        formula = canonical(count)
        note = f"  [if {' and '.join(str(c) for c in t.when)}]" if t.when else ""
        note += f"  [tied to {t.tied_to} if {t.tied_when}]" if t.tied_to else ""
        if t.head is not None:
            out[f"{t.name}  (head {t.head})"] = formula + note
            continue
        out[t.name] = formula + note
        total.append(count)
    out["total (all optional params present, none tied)"] = canonical(_balanced("+", total) or parse_expr(0))
    return out


def _balanced(op: str, terms: list[Expr]) -> Expr | None:
    """`a op b op ...` as a balanced tree of Exprs: never re-parsed from text (a large model's sum is
    over the expression length limit) and never deep (a chain of 1,000 would be 1,000 frames deep)."""
    if not terms:
        return parse_expr(1) if op == "*" else None
    while len(terms) > 1:
        terms = [Expr("binary", op, tuple(terms[i:i + 2])) if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def aot_compile(kernels_source: str, kernels: dict, targets: list[str]) -> dict:
    """Compile every kernel for `targets` (sm_80, sm_90) in fp32 and bf16; record shared memory and warps."""
    import tempfile

    from compiler.triton.aot import compile_in_child
    with tempfile.TemporaryDirectory(prefix="graphspec-aot-") as tmp:
        path = Path(tmp) / "kernels.py"
        path.write_text(kernels_source)
        compiled = compile_in_child(path, kernels, targets)
    return {name: {**info, "compiled": compiled[name]} for name, info in kernels.items()}
