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
from compiler.artifact import cache_root, check_target, clean_stale, is_complete, read_manifest, write_artifact
from compiler.emit import emit_model, py
from compiler.emit_kernels import emit_kernels, kernel_manifest
from compiler.errors import SpecError
from compiler.extends import source_chain
from compiler.ir import ModelIR
from compiler.lower import lower
from compiler.passes.fusion import check_contracts, fuse
from compiler.passes.keep_positions import insert_keep_positions
from compiler.spec import Spec, load_spec
from compiler.symbolic import canonical
from compiler.weight_rules import check_rules, model_tensors
from compiler.yaml_source import read_source
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
    fusion: object = None          # the FusionPlan, when this call compiled (not a cache hit)


@lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """A hash of the compiler's own source: artifacts are stale when the code that wrote them changes."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
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
        return CompileResult(target, True, time.perf_counter() - start, read_manifest(target))
    check_target(target)    # before the work: a target that is not ours is refused at once

    spec = load_spec(spec_path)
    ir = lower(spec)
    problems = check_rules(spec)
    if problems:
        raise SpecError(problems)
    kept = insert_keep_positions(ir)
    fusion = fuse(ir, enabled=options.get("fuse", True))
    check_contracts(ir, fusion)
    kernels = emit_kernels(ir, fusion, spec_path.name, py) if fusion.enabled else None
    files = {
        "model.py": emit_model(ir, spec_path.name, fusion),
        "spec.json": json.dumps({"source": spec_path.name, **({"extends": [p.name for p in chain]} if chain else {}),
                                 "spec": spec.data}, indent=1) + "\n",
        "ir.txt": ir.dump() + "\n",
        "fusion.txt": (fusion.explain(ir) if fusion.enabled else "fusion disabled (--no-fuse)") + "\n",
    }
    if kernels is not None:
        files["kernels.py"] = kernels
    manifest = {
        "name": spec.name, "key": key, "source": str(spec_path), "spec_sha256": hashlib.sha256(spec_bytes).hexdigest(),
        "parents": {str(p): hashlib.sha256(b).hexdigest() for p, b in zip(chain, parents)},
        "compiler_fingerprint": compiler_fingerprint(), "versions": versions(), "options": options,
        "ops": dict(sorted(Counter(n.op for b in ir.blocks.values() for n in b.order()).items())),
        "blocks": list(ir.blocks), "params": param_formulas(spec), "fusion": fusion.manifest(ir),
        "kernels": kernel_manifest(fusion),
        # values cut before the model's per-position tail (a forward may compute its last positions only)
        "keep_positions": kept,
    }
    if options.get("aot") and kernels is not None:
        manifest["kernels"] = aot_compile(kernels, manifest["kernels"], options["aot"])
    manifest["compile_seconds"] = round(time.perf_counter() - start, 4)
    write_artifact(target, files, manifest)
    return CompileResult(target, False, time.perf_counter() - start, read_manifest(target), ir, spec, fusion=fusion)


def param_formulas(spec: Spec) -> dict:
    """Each param's element count as a formula over config names, and the total."""
    out, total = {}, []
    for t in model_tensors(spec):
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
