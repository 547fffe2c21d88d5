"""Ahead-of-time compiles of an artifact's kernels for GPU targets, on a machine without a GPU.

`triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", cc, 32))` runs the
whole GPU pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin), which is stricter than the interpreter:
a kernel that only runs interpreted fails here. Runs in a child process (`python -m
compiler.triton.aot`), because a process whose triton was imported in interpreter mode cannot compile.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


def signature(kernel, aot: dict, dtype: str) -> tuple[dict, dict]:
    sig, constexprs = {}, {}
    for arg in kernel.arg_names:
        if arg in aot["constexprs"]:
            sig[arg] = "constexpr"
            value = aot["constexprs"][arg]
            constexprs[arg] = value[dtype] if isinstance(value, dict) else value
        elif arg in aot.get("u8", ()):
            sig[arg] = "*u8"
        elif arg in aot.get("typed", {}):     # a pointer whose element type does not follow the dtype
            sig[arg] = f"*{aot['typed'][arg]}"
        elif arg in aot["pointers"]:
            sig[arg] = f"*{dtype}"
        elif arg in aot["ints"]:
            sig[arg] = "i32"
        elif arg in aot["floats"]:
            sig[arg] = "fp32"
        else:
            raise ValueError(f"{kernel.__name__}: argument '{arg}' has no AOT type")
    return sig, constexprs


def compile_all(kernels_py: Path, specs: dict, targets: list[str], dtypes: list[str]) -> dict:
    import importlib.util

    import triton
    from triton.backends.compiler import GPUTarget
    spec = importlib.util.spec_from_file_location("graphspec_aot_kernels", kernels_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = {}
    for name, info in specs.items():
        # several jobs may compile one kernel with different constexprs: "kernel" names it then
        kernel = getattr(module, f"{info.get('kernel', name)}_kernel")
        entry = out.setdefault(name, {})
        for target in targets:
            cc = int(target.removeprefix("sm_"))
            for dtype in dtypes:
                sig, constexprs = signature(kernel, info["aot"], DTYPES[dtype])
                src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
                options = {"num_warps": info["aot"].get("num_warps", 4)}
                compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
                entry.setdefault(target, {})[dtype] = {
                    "shared": compiled.metadata.shared, "num_warps": compiled.metadata.num_warps,
                    "ptx_bytes": len(compiled.asm["ptx"]), "cubin_bytes": len(compiled.asm["cubin"])}
    return out


def compile_in_child(kernels_py: Path, specs: dict, targets: list[str], dtypes=("fp32", "bf16")) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    job = json.dumps({"kernels": str(kernels_py), "specs": specs, "targets": list(targets), "dtypes": list(dtypes)})
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "compiler.triton.aot"], input=job, capture_output=True, text=True,
                          env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"ahead-of-time compile of {kernels_py} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    job = json.loads(sys.stdin.read())
    result = compile_all(Path(job["kernels"]), job["specs"], job["targets"], job["dtypes"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
