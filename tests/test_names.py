"""Emission never turns spec text into code: strings from a spec reach model.py only as literals or
escaped comments, and every spec name that becomes a Python identifier is checked at its line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.pipeline import compile_spec

LLAMA = Path("specs/llama.yaml").read_text()


def write(tmp_path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def edited(old: str, new: str) -> str:
    assert old in LLAMA, old
    return LLAMA.replace(old, new, 1)


def compile_error(tmp_path, text: str) -> str:
    with pytest.raises(SpecError) as err:
        compile_spec(write(tmp_path, text), tmp_path / "out")
    return str(err.value)


def import_in_fresh_process(directory: Path) -> subprocess.CompletedProcess:
    """Import the emitted model.py and report whether the marker file the spec text tries to create exists."""
    code = (f"import importlib.util, pathlib, sys; sys.path.insert(0, {str(Path.cwd())!r}); "
            f"s = importlib.util.spec_from_file_location('m', {str(directory / 'model.py')!r}); "
            "m = importlib.util.module_from_spec(s); sys.modules['m'] = m; s.loader.exec_module(m); print(m.__doc__)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


INJECTIONS = {
    "doc with quotes and a newline": ('doc: Llama decoder-only transformer (Llama 2 / Llama 3 family).',
                                      'doc: "x\\"\\"\\"\\nimport pathlib; pathlib.Path(MARK).write_text(\'ran\')\\n\\"\\"\\""'),
    "hf key with a newline": ("vocab_size:          int",
                              'vocab_size:          {hf: "vocab_size\\nimport pathlib; pathlib.Path(MARK).write_text(\'ran\')", '
                              "type: int}"),
    "check message with quotes": ('else: "only hidden_act: silu is described by this spec"',
                                  'else: "\\"\\"\\"\\nimport pathlib; pathlib.Path(MARK).write_text(\'ran\')\\n"'),
}


@pytest.mark.parametrize("case", list(INJECTIONS))
def test_spec_text_never_runs_when_the_artifact_is_loaded(tmp_path, case):
    old, new = INJECTIONS[case]
    mark = tmp_path / "ran"
    text = edited(old, new.replace("MARK", repr(str(mark))))
    result = compile_spec(write(tmp_path, text), tmp_path / "out")
    done = import_in_fresh_process(result.directory)
    assert done.returncode == 0, done.stderr
    assert not mark.exists()
    # and the text is still there, as data: a docstring, a comment or the interface
    assert "pathlib.Path(" in (result.directory / "model.py").read_text() + (result.directory / "interface.json").read_text()


@pytest.mark.parametrize("old,new,role", [
    ("- h: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps, label: attn_norm}\n      - h: {op: call, block: attn, x: h, cos: cos, sin: sin, label: attn}",
     "- lambda: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps}\n      - h: {op: call, block: attn, x: lambda, cos: cos, sin: sin}",
     "Python keyword"),
    ("- h: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps, label: attn_norm}\n      - h: {op: call, block: attn, x: h, cos: cos, sin: sin, label: attn}",
     "- self: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps}\n      - h: {op: call, block: attn, x: self, cos: cos, sin: sin}",
     "used by the generated code"),
    ("- h: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps, label: attn_norm}\n      - h: {op: call, block: attn, x: h, cos: cos, sin: sin, label: attn}",
     "- F: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps}\n      - h: {op: call, block: attn, x: F, cos: cos, sin: sin}",
     "used by the generated code"),
    ("- h: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps, label: attn_norm}\n      - h: {op: call, block: attn, x: h, cos: cos, sin: sin, label: attn}",
     "- len: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps}\n      - h: {op: call, block: attn, x: len, cos: cos, sin: sin}",
     "builtin"),
])
def test_value_names_that_would_break_the_generated_code_are_errors_at_their_line(tmp_path, old, new, role):
    message = compile_error(tmp_path, edited(old, new))
    line = edited(old, new).splitlines().index(next(l for l in edited(old, new).splitlines() if "{op: rms_norm, x: x, w: attn_norm" in l)) + 1
    assert role in message and f"spec.yaml:{line}:" in message


def test_a_param_that_would_shadow_a_torch_module_attribute_is_an_error(tmp_path):
    text = edited("attn_norm: {norm: hidden_size}", "training: {norm: hidden_size}").replace("w: attn_norm", "w: training")
    assert "param name 'training' would shadow" in compile_error(tmp_path, text)


def test_a_block_whose_class_name_the_generated_code_uses_is_an_error(tmp_path):
    text = LLAMA.replace("  mlp:\n", "  config:\n", 1).replace("{block: mlp}", "{block: config}")
    assert "gives the class 'Config'" in compile_error(tmp_path, text)


def test_a_config_name_that_is_a_keyword_is_an_error(tmp_path):
    text = edited("  mlp_bias:            bool = false",
                  "  mlp_bias:            bool = false\n  in: {hf: x, type: int, default: 1}")
    assert "config name 'in' is a Python keyword" in compile_error(tmp_path, text)
