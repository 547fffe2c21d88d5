"""Weight-rule name templates match in linear time with the binding a greedy regular expression
would give, and templates that cannot match unambiguously are refused at the rule's line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from compiler.errors import SpecError
from compiler.pipeline import compile_spec
from runtime.rules import PLACEHOLDER, Template
from tests.hostile import fuzz, no_hang

LLAMA = Path("specs/llama.yaml").read_text()


def greedy_regex(template: str) -> re.Pattern:
    """The reference: one greedy dot-free group per placeholder, anchored at both ends."""
    parts, pos = [], 0
    for m in PLACEHOLDER.finditer(template):
        parts += [re.escape(template[pos:m.start()]), f"(?P<{m.group(1)}>[^.]+)"]
        pos = m.end()
    return re.compile("".join(parts) + re.escape(template[pos:]) + r"\Z")


# a small alphabet with the dot, so that segments, repeats and near-misses are common
LITERAL = st.text(alphabet="ab._", max_size=3)


@st.composite
def templates(draw) -> str:
    """Templates whose placeholders are unique and separated by literal text."""
    count = draw(st.integers(0, 4))
    text = draw(LITERAL)
    for i in range(count):
        text += "{" + "pqrs"[i] + "}"
        text += draw(st.text(alphabet="ab._", min_size=1 if i < count - 1 else 0, max_size=3))
    return text


@fuzz(1000)
@given(templates(), st.text(alphabet="ab._", max_size=12))
@example("{p}a{q}_a_", "_a_")   # found by this test: no room left for the first placeholder
def test_template_match_agrees_with_the_greedy_regex(template, name):
    expected = greedy_regex(template).match(name)
    got = Template(template).match(name)
    assert (got is None) == (expected is None)
    if got is not None:
        assert got.groupdict() == expected.groupdict()


def test_placeholders_bind_whole_segments_of_a_checkpoint_name():
    m = Template("model.layers.{i}.self_attn.{proj}.{t}").match("model.layers.12.self_attn.q_proj.weight")
    assert m.groupdict() == {"i": "12", "proj": "q_proj", "t": "weight"}
    assert Template("h.{i}.c_{x}").match("h.0.c_attn").groupdict() == {"i": "0", "x": "attn"}
    assert Template("model.layers.{i}.w").match("model.layers.1.2.w") is None   # never across a dot
    assert Template("model.layers.{i}.w").match("model.layers..w") is None      # never empty


def test_a_trailing_newline_does_not_match():
    # a regular expression's `$` also matches before a final newline
    assert Template("a.{i}.weight").match("a.0.weight\n") is None


def test_matching_is_linear_in_the_name_where_a_regex_backtracks():
    # a regex with these groups takes minutes on this name; the answer (no match) is immediate here
    template = "x" + "_".join("{%s}" % c for c in "abcdefghij") + "!"
    name = "x" + "_" * 50_000 + "?"
    with no_hang(what="matching a template with many placeholders in one segment"):
        assert Template(template).match(name) is None
        assert Template(template).match(name[:-1] + "!").groupdict()["j"] == "_"


@pytest.mark.parametrize("template, words", [
    ("model.{i}.{i}.weight", ["{i}", "appears twice"]),
    ("model.{a}{b}.weight", ["{a}{b}", "adjacent"]),
])
def test_an_ambiguous_template_is_refused(template, words):
    with pytest.raises(ValueError) as info:
        Template(template)
    assert all(w in str(info.value) for w in words)


@pytest.mark.parametrize("field, old, new, words", [
    ("from", '{from: "model.layers.{i}.mlp.{proj}.{t}"', '{from: "model.layers.{i}.mlp.{proj}.{i}"', "appears twice"),
    ("to", 'to: "layers.{i}.mlp.{proj}.{t}"}', 'to: "layers.{i}.mlp.{proj}{t}"}', "adjacent"),
])
def test_an_ambiguous_template_in_a_spec_is_a_spec_error_at_its_line(tmp_path, field, old, new, words):
    assert old in LLAMA
    text = LLAMA.replace(old, new)
    spec = tmp_path / "llama.yaml"
    spec.write_text(text)
    line = text[:text.index(new)].count("\n") + 1
    with pytest.raises(SpecError) as info:
        compile_spec(spec, tmp_path / "out")
    [problem] = [p for p in info.value.problems if words in p.message]
    assert (problem.file, problem.line, problem.path) == (str(spec), line, f"weights[2].{field}")
