"""Compiling (with quantization too), validating and diffing specs never import torch or triton: only the runtime needs them,
and `import torch` alone would be over half of a cold `graphspec compile`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SPECS = sorted(str(p) for p in Path("specs").glob("*.yaml"))

SCRIPT = """
import sys
from pathlib import Path

from compiler.pipeline import compile_spec
from tools.cli import main

out, specs = Path(sys.argv[1]), sys.argv[2:]
for spec in specs:
    compile_spec(Path(spec), out / Path(spec).stem)
compile_spec(Path(specs[0]), out / "quantized", {"quant": {"bits": 4, "sym": False}})
assert main(["validate", *specs]) == 0
main(["diff", specs[0], specs[-1], "--color", "never"])
print("imported:", sorted(m for m in ("torch", "triton") if m in sys.modules))
"""


def test_compile_validate_and_diff_of_every_spec_import_neither_torch_nor_triton(tmp_path):
    assert len(SPECS) > 1
    # A fresh interpreter: this test process has torch imported already.
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), *SPECS],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "imported: []"
    assert len(list(tmp_path.glob("*/model.py"))) == len(SPECS) + 1     # and one with the quantize pass
