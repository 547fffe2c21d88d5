"""`ignore` weight rules: checkpoint tensors known to be unneeded are skipped and reported, never silently."""
from __future__ import annotations

from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.spec import load_spec

GPT2 = Path("specs/gpt2.yaml").read_text()
RULE = '{from: "h.{i}.attn.{mask}", ignore: "a causal-mask buffer; the attention op masks by itself"}'


@pytest.mark.parametrize("rule, message", [
    ('{from: "h.{i}.attn.{mask}", ignore: "x", to: "y"}', "needs either 'to'"),
    ('{from: "h.{i}.attn.{mask}"}', "needs either 'to'"),
    ('{from: ["h.{i}.attn.{mask}", "a"], ignore: "x"}', "takes one 'from' template and no transforms"),
    ('{from: "h.{i}.attn.{mask}", ignore: "x", transforms: [transpose]}', "takes one 'from' template"),
])
def test_a_rule_is_either_a_mapping_or_an_ignore_and_says_so_at_its_line(rule, message):
    assert RULE in GPT2
    with pytest.raises(SpecError) as info:
        load_spec("gpt2.yaml", GPT2.replace(RULE, rule))
    assert message in str(info.value) and "gpt2.yaml:" in str(info.value) and "weights[" in str(info.value)


def test_ignore_rules_need_no_target_and_keep_their_reason():
    spec = load_spec("gpt2.yaml", GPT2)
    ignores = [r for r in spec.weights if r.ignore is not None]
    assert [r.sources for r in ignores] == [["h.{i}.attn.{mask}"]]     # after the base prefix transformer.
    assert all(r.targets == [] and "mask" in r.ignore for r in ignores)
