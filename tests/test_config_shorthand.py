"""Config entries in their short form (`vocab_size: int`, `eps: float = 1e-6`) and the rule that
tells a read entry from a derived one: derived exactly when a mapping has a default and no hf."""
from __future__ import annotations

import textwrap

import pytest

from compiler.errors import SpecError
from compiler.spec import load_spec

BODY = """
blocks: {}
model:
  inputs: {x: [B, S, hidden_size]}
  params: {n: {norm: hidden_size}}
  graph:
    - y: {op: rms_norm, x: x, w: n, eps: eps}
  outputs: [y]
weights:
  - {from: "n.weight", to: "n.weight"}
"""


def spec_with(tmp_path, config: str, name="short.yaml", header="spec: 1\nname: short\n"):
    path = tmp_path / name
    path.write_text(header + "config:\n" + textwrap.indent(textwrap.dedent(config), "  ") + BODY)
    return load_spec(path)


def entries(spec) -> dict:
    return {e.name: (e.hf, e.type, str(e.default) if e.default is not None else None, e.has_default)
            for e in spec.config.values()}


def test_a_short_entry_reads_the_key_of_its_own_name(tmp_path):
    spec = spec_with(tmp_path, """
        hidden_size: int
        eps: float = 1e-6
        head_dim: int = hidden_size // 2
        act: str = silu
        scaling: dict = null
        eos: any = 1
    """)
    assert entries(spec) == {
        "hidden_size": (["hidden_size"], "int", None, False),
        "eps": (["eps"], "float", "1e-06", True),
        "head_dim": (["head_dim"], "int", "hidden_size // 2", True),
        "act": (["act"], "str", "silu", True),
        "scaling": (["scaling"], "dict", None, True),
        "eos": (["eos"], "any", "1", True),
    }


def test_a_mapping_with_a_default_and_no_hf_is_derived_and_one_without_a_default_is_read(tmp_path):
    spec = spec_with(tmp_path, """
        hidden_size: {type: int, doc: read under its own name}
        eps: {type: float, default: 1e-5}
        wide: {hf: [n_embd, hidden], type: int, default: 4}
    """)
    found = entries(spec)
    assert found["hidden_size"][0] == ["hidden_size"]
    assert found["eps"][0] == []
    assert found["wide"][0] == ["n_embd", "hidden"]


def test_a_dict_default_other_than_null_needs_the_mapping_form(tmp_path):
    with pytest.raises(SpecError, match="a dict default in the short form can only be null"):
        spec_with(tmp_path, """
            hidden_size: int
            eps: float = 1e-6
            scaling: dict = {}
        """)


def test_a_malformed_short_entry_is_a_schema_error_at_its_line(tmp_path):
    with pytest.raises(SpecError) as info:
        spec_with(tmp_path, """
            hidden_size: integer
            eps: float = 1e-6
        """)
    assert "short.yaml:5" in str(info.value) and "config.hidden_size" in str(info.value)


def test_a_child_changing_the_default_of_a_short_parent_entry_keeps_reading_it(tmp_path):
    spec_with(tmp_path, """
        hidden_size: int
        eps: float = 1e-6
    """, name="parent.yaml", header="spec: 1\nname: parent\n")
    child = tmp_path / "child.yaml"
    child.write_text("spec: 1\nname: child\nextends: parent\nconfig:\n"
                     "  eps: {default: 1e-5}\n  hidden_size: int = 8\n")
    found = entries(load_spec(child))
    assert found["eps"] == (["eps"], "float", "1e-05", True)
    assert found["hidden_size"] == (["hidden_size"], "int", "8", True)
