"""The emitted files are checked in (tests/golden/) and regenerated here: a change to the compiler's
output shows up as a reviewable diff, like Transformers' modular-file check.

Update after an intended change:  python -m tests.test_golden
"""
from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from compiler.pipeline import compile_spec

GOLDEN = Path(__file__).parent / "golden"
CASES = {"llama.model.py": ("specs/llama.yaml", "model.py"), "llama.fusion.txt": ("specs/llama.yaml", "fusion.txt"),
         "gpt2.model.py": ("specs/gpt2.yaml", "model.py")}


def emitted(spec: str, file: str, out: Path) -> str:
    return (compile_spec(spec, out / Path(spec).stem).directory / file).read_text()


@pytest.mark.parametrize("golden", list(CASES))
def test_emitted_files_equal_the_checked_in_copies(tmp_path, golden):
    want = (GOLDEN / golden).read_text()
    got = emitted(*CASES[golden], tmp_path)
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "emitted", n=2))
        pytest.fail(f"{golden} changed; if intended, run `python -m tests.test_golden`:\n{diff[:4000]}")


if __name__ == "__main__":
    import tempfile
    out = Path(tempfile.mkdtemp())
    for golden, (spec, file) in CASES.items():
        (GOLDEN / golden).write_text(emitted(spec, file, out))
        print(f"wrote tests/golden/{golden}")
