"""Text written in a spec (docs, config.json key names, messages) never becomes code in model.py.

Every free-text field of llama.yaml gets a payload that, pasted unescaped into Python, would be a
statement binding INJECTED; the emitted model.py must parse and bind no such name.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from compiler.pipeline import compile_spec

PAYLOADS = ['x"""\nINJECTED = 1\n"""', "x'''\nINJECTED = 1\n'''", "x\nINJECTED = 1\n# ", 'x"\nINJECTED = 1\n"']


def with_text_fields(data: dict, payload: str) -> dict:
    """llama.yaml with the payload in every field that holds free text."""
    data["doc"] = payload
    for entry in data["config"].values():
        if isinstance(entry, dict):  # shorthand entries (`int = 0`) have no free text
            entry["doc"] = payload
    data["config"]["vocab_size"] = {"type": "int", "hf": ["vocab_size", payload], "doc": payload}
    for block in data["blocks"].values():
        block["doc"] = payload
    data["model"]["doc"] = payload
    for check in data.get("checks", []):
        check["else"] = payload
    return data


@pytest.mark.parametrize("payload", PAYLOADS)
def test_spec_text_never_becomes_code(tmp_path, payload):
    data = with_text_fields(yaml.safe_load(Path("specs/llama.yaml").read_text()), payload)
    spec = tmp_path / "llama.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    out = compile_spec(spec, tmp_path / "out").directory
    tree = ast.parse((out / "model.py").read_text())
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "INJECTED" not in bound
