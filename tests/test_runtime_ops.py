"""The op table and the run-time library agree: every op's `run` and every `ops.<name>` an emitted
model.py calls exist in runtime.ops."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from compiler.ops import OPS
from compiler.pipeline import compile_spec
from runtime import ops

SPECS = sorted(Path("specs").glob("*.yaml"))


def test_every_op_run_names_a_function_of_the_runtime_library():
    runs = {name: op.run for name, op in OPS.items() if op.run is not None}
    assert {"attention", "rms_norm", "rope_table", "positions", "relative_buckets"} <= runs.keys()
    missing = {name: run for name, run in runs.items() if not callable(getattr(ops, run, None))}
    assert missing == {}


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_every_ops_call_in_emitted_model_files_resolves_in_the_runtime_library(tmp_path, fuse):
    called = set()
    for spec in SPECS:
        text = (compile_spec(spec, tmp_path / spec.stem, {"fuse": fuse}).directory / "model.py").read_text()
        assert "from runtime import ops" in text and "compiler" not in text.split('"""')[-1]
        called |= set(re.findall(r"\bops\.(\w+)\(", text))
    assert {"attention", "Linear", "Norm"} <= called
    assert called <= set(ops.__all__)
