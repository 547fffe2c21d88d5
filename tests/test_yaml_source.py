import time

import pytest

from compiler.errors import SpecError
from compiler.yaml_source import format_path, load_yaml


def load(text, name="spec.yaml", **kw):
    return load_yaml(name, text=text, **kw)


def problems(text, **kw):
    with pytest.raises(SpecError) as info:
        load(text, **kw)
    return info.value.problems


DOC = """\
name: demo
blocks:
  a:
    graph:
      - {op: matmul, x: in}
      - op: add
        x: h
        y: 1
"""


def test_builds_plain_data():
    data, _ = load("a: 1\nb: 2.5\nc: true\nd: ~\ne: hi\nf: [1, '2']\ng: {h: null}\n")
    assert data == {"a": 1, "b": 2.5, "c": True, "d": None, "e": "hi",
                    "f": [1, "2"], "g": {"h": None}}
    assert type(data["a"]) is int and type(data["b"]) is float


def test_exponent_floats_without_dot_are_floats():
    data, _ = load("eps: 1e-6\nbig: 1E5\nneg: -2e+3\ndotted: 1.0e5\nquoted: '1e-6'\n")
    assert data == {"eps": 1e-6, "big": 1e5, "neg": -2e3, "dotted": 1e5, "quoted": "1e-6"}
    assert all(type(data[k]) is float for k in ("eps", "big", "neg", "dotted"))


def test_dates_and_merge_keys_stay_strings():
    data, _ = load("when: 2024-01-01\n<<: x\n")
    assert data == {"when": "2024-01-01", "<<": "x"}


def test_python_tag_refused_and_not_executed(tmp_path):
    marker = tmp_path / "ran"
    [p] = problems(f'x: 1\ncmd: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert not marker.exists()
    assert p.file == "spec.yaml" and p.line == 2
    assert "!!python/object/apply:os.system" in p.message


def test_binary_and_custom_tags_refused_with_line():
    found = problems("a: !!binary aGk=\nb:\n  c: !custom 3\nd: !!set {x}\n")
    assert [(p.line, p.path) for p in found] == [(1, "a"), (3, "b.c"), (4, "d")]
    assert "!!binary" in found[0].message and "!custom" in found[1].message
    assert "!!set" in found[2].message


def test_invalid_explicit_scalar_refused():
    [p] = problems("n: !!int abc\n")
    assert p.line == 1 and "!!int" in p.message


def test_billion_laughs_fails_fast():
    doc = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        doc.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(doc) + "\n"
    assert len(text) < 1000
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load(text)
    assert time.perf_counter() - start < 1.0
    [p] = info.value.problems
    assert p.line == 1 and "&a" in p.message


def test_single_alias_refused():
    [p] = problems("x: 1\ny: *x\n")
    assert p.line == 2 and "*x" in p.message


def test_duplicate_key_reports_both_lines():
    [p] = problems("a: 1\nb:\n  x: 1\n  y: 2\n  x: 3\n")
    assert p.line == 5 and p.column == 3 and p.path == "b.x"
    assert "duplicate key 'x' (first at line 3)" in p.message


def test_every_duplicate_reported():
    found = problems("a: 1\na: 2\nb: {c: 1, c: 2}\na: 3\n")
    assert [p.line for p in found] == [2, 3, 4]


def test_keys_that_are_not_text_are_refused_with_the_quoted_form():
    # a spec is JSON data (its schema is JSON Schema, the artifact stores it as spec.json): keys are text
    found = problems("1: one\n'2': two\ntrue: x\n")
    assert [(p.line, p.message) for p in found] == [
        (1, "mapping key '1' is read as int, but keys are names: quote it ('1')"),
        (3, "mapping key 'true' is read as bool, but keys are names: quote it ('true')")]
    data, _ = load("'1': one\n")
    assert data == {"1": "one"}


def test_non_scalar_key_refused():
    [p] = problems("? [a, b]\n: 1\n")
    assert p.line == 1 and "keys" in p.message


def test_syntax_error_has_file_line_column():
    [p] = problems("a: 1\nb: [1, 2\nc: 3\n", name="bad.yaml")
    assert p.file == "bad.yaml" and p.line is not None and p.column is not None
    assert "syntax" in p.message
    [p] = problems("a: 1\n  b: 2\n")
    assert (p.line, p.column) == (2, 4)


def test_too_large_refused_before_parsing(tmp_path):
    problems("a: [" * 10 + "\n", max_bytes=5)  # would be a syntax error if parsed
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" * 100)
    with pytest.raises(SpecError, match="larger than 100 bytes"):
        load_yaml(big, max_bytes=100)


def test_not_utf8_names_file_and_offset(tmp_path):
    bad = tmp_path / "latin.yaml"
    bad.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(SpecError) as info:
        load_yaml(bad)
    [p] = info.value.problems
    assert p.file == str(bad) and "byte offset 11" in p.message and p.line == 2


def test_missing_file_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_yaml(missing)
    assert info.value.problems[0].file == str(missing)
    assert "not found" in str(info.value)


def test_reads_file_and_text_names_path(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("a: 1\n")
    data, smap = load_yaml(f)
    assert data == {"a": 1} and smap.file == str(f)
    _, smap = load_yaml("given.yaml", text="a: 1\n")
    assert smap.file == "given.yaml"


def test_empty_document_returns_none():
    for text in ("", "# only a comment\n"):
        data, smap = load(text)
        assert data is None and smap.mark(()) is None


def test_multiple_documents_refused():
    [p] = problems("a: 1\n---\nb: 2\n")
    assert p.line == 2 and "expected one YAML document" in p.message


def test_too_deep_nesting_refused():
    [p] = problems("[" * 500 + "]" * 500 + "\n")
    assert "nested" in p.message


def test_mark_of_nested_value():
    _, smap = load(DOC)
    assert smap.mark(()) == (1, 1)
    assert smap.mark(("blocks", "a", "graph", 0, "x")) == (5, 25)
    assert smap.mark(("blocks", "a", "graph", 1)) == (6, 9)
    assert smap.mark(("blocks", "a", "graph", 1, "x")) == (7, 12)
    assert smap.mark(("blocks", "a", "graph", 1, "y")) == (8, 12)


def test_key_mark_points_at_key():
    _, smap = load(DOC)
    assert smap.key_mark(("blocks", "a", "graph", 1, "x")) == (7, 9)
    assert smap.key_mark(("blocks",)) == (2, 1)
    assert smap.mark(("blocks",)) == (3, 3)
    assert smap.key_mark(("blocks", "a", "graph", 1)) == (6, 9)  # items have no key: falls back


def test_unknown_path_falls_back_to_nearest_ancestor():
    _, smap = load(DOC)
    assert smap.mark(("blocks", "a", "graph", 1, "x", "deeper", 3)) == (7, 12)
    assert smap.mark(("nothing", "here")) == (1, 1)


def test_problem_renders_file_line_column_path():
    _, smap = load(DOC)
    p = smap.problem(("blocks", "a", "graph", 1, "x"), "unknown input 'h'")
    assert (p.file, p.line, p.column, p.path) == ("spec.yaml", 7, 12, "blocks.a.graph[1].x")
    assert str(p) == "spec.yaml:7:12: at blocks.a.graph[1].x unknown input 'h'"


def test_sub_view_uses_relative_paths():
    _, smap = load(DOC)
    block = smap.sub(("blocks", "a"))
    assert block.file == "spec.yaml"
    assert block.mark(("graph", 1, "x")) == (7, 12)
    assert block.sub(("graph", 1)).key_mark(("x",)) == (7, 9)
    assert block.problem(("graph", 1, "x"), "m").path == "blocks.a.graph[1].x"


def test_format_path():
    assert format_path(("blocks", "attention", "graph", 3, "x")) == "blocks.attention.graph[3].x"
    assert format_path(()) == ""
    assert format_path((0, "a")) == "[0].a"
