"""Every emitted kernel of every spec compiles ahead of time for sm_80 and sm_90, fp32 and bf16.

The interpreter accepts kernels the GPU compiler rejects; this runs Triton's real pipeline down to
PTX and a cubin on this CPU machine, and the manifest keeps each kernel's shared memory and warps.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from compiler.pipeline import compile_spec

# the shipped specs, and tests/specs/kernel_ops.yaml: every op with a Triton lowering, whether or not a
# shipped spec uses it yet
SPECS = sorted(Path("specs").glob("*.yaml")) + sorted(Path("tests/specs").glob("*.yaml"))
TARGETS = ["sm_80", "sm_90"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    # each compile's kernels build in a child process: two at a time use both cores
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda p: compile_spec(p, out / p.stem, {"aot": TARGETS}), SPECS)
        return {p.stem: r.manifest for p, r in zip(SPECS, results)}


@pytest.mark.parametrize("spec", [p.stem for p in SPECS])
def test_every_kernel_compiles_to_ptx_and_cubin_for_sm80_and_sm90(compiled, spec):
    manifest = compiled[spec]
    kernels = manifest["kernels"]
    groups = {f"{b}.{g['name']}" for b, gs in manifest["fusion"]["groups"].items() for g in gs
              if g["template"] != "projection"}
    assert {g for k in kernels.values() for g in k["groups"]} == groups     # no group left without its kernel
    for name, kernel in kernels.items():
        for target in TARGETS:
            for dtype in ("fp32", "bf16"):
                meta = kernel["compiled"][target][dtype]
                assert meta["ptx_bytes"] > 0 and meta["cubin_bytes"] > 0, (name, target, dtype)
                assert meta["num_warps"] == kernel["aot"].get("num_warps", 4)
                assert 0 <= meta["shared"] <= 228 * 1024, (name, target, dtype, meta)
