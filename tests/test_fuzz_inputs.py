"""Property-based fuzzing of everything graphspec reads from users and checkpoints: expressions, spec
files (mutations of the shipped specs), safetensors headers, shard indexes and artifact manifests.

The property is the same everywhere: the input is accepted or refused with our own error type; no
other exception, no hang, no runaway memory (tests/hostile.py). The suite runs a fixed set of
examples per fuzzer; GRAPHSPEC_FUZZ_EXAMPLES=N runs N random ones each. Every failure found is kept
below as an explicit @example.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from compiler.errors import SpecError
from compiler.pipeline import compile_spec
from compiler.symbolic import canonical
from runtime.errors import ArtifactError, CheckpointError
from runtime.expr import ExprError, parse_expr
from runtime.manifest import MANIFEST, is_complete, read_manifest
from runtime.safetensors_io import INDEX_NAME, SafetensorsFile, open_checkpoint
from tests.hostile import fuzz, only_our_errors

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


# -- expressions ------------------------------------------------------------------------------------
TOKENS = ["x", "y", "d", "d.k", "l", "l[0]", "l[-1]", "0", "1", "2", "-1", "0.5", "1e308", "9223372036854775807",
          "'s'", "true", "null", "+", "-", "*", "/", "//", "%", "**", "==", "<", ">=", "and", "or", "not", "if",
          "else", "(", ")", "[", "]", ",", ".", "min(", "max(", "abs(", "sqrt(", "log(", "exp(", "int(",
          "float(", "round(", "len(", "floor(", "ceil("]
ENV = {"x": 3, "y": 0.5, "d": {"k": 2}, "l": [1, 2], "s": "text", "n": None}


def fold(e):
    """What the compiler and the runtime do with a parsed expression."""
    normal = canonical(e)
    if not normal.startswith("<"):   # the compiler reads the normal form back as an expression
        try:
            parse_expr(normal)
        except ExprError as err:
            raise AssertionError(f"the normal form of {e.text!r} does not parse: {err}") from err
    e.to_python()
    e.substitute({"x": parse_expr("y + 1")})
    return e.evaluate(ENV)


def parse_and_use(text):
    return fold(parse_expr(text))


@fuzz(800)
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=40).map(" ".join) | st.text(max_size=60))
@example("10 ** 4300")
@example(" * ".join(["(2**62)**60"] * 5) + " + x")   # past Python's int-to-text digit limit, once printed
@example("(" * 60 + "1" + ")" * 60)
@example("1" + "+1" * 499)
@example("x // 1e30")      # found by the spec fuzzer: its normal form held a literal past int64
def test_fuzz_expressions(text):
    only_our_errors(parse_and_use, text, allowed=(ExprError,))


# -- spec files -------------------------------------------------------------------------------------
INTERESTING = [0, -1, 2.5, 2**63, -(2**63) - 1, 10**30, 1e308, True, None, "", "llama\n", 'a"""b\nimport os',
               "\0", "B", "1/0", "2**64", "10**4300", "x" * 2000, [], [1], {}, {"a": 1}, "'s' + 1", "not",
               "{i}{j}", "{i}.{i}", "..", "a..b", "num_layers * 2**62", "len(x)", "__import__('os')"]
KEYS = ["op", "repeat", "tied", "block", "when", "extends", "ignore", "transforms", "hf", "default", "type",
        1, True, None, "x\n"]


def paths(node, at=()):
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, at + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, at + (i,))


@st.composite
def mutated_specs(draw) -> tuple[str, str]:
    """(file name, text): a shipped spec with a few values replaced, keys renamed or entries dropped."""
    source = draw(st.sampled_from(SPECS))
    data = yaml.safe_load(source.read_text())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from([p for p in paths(data) if p]))
        parent = data
        for part in where[:-1]:
            parent = parent[part]
        key, how = where[-1], draw(st.sampled_from(["value", "value", "json", "key", "drop"]))
        if how == "value":
            parent[key] = draw(st.sampled_from(INTERESTING))
        elif how == "json":
            parent[key] = draw(JSON)
        elif how == "key" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = parent.pop(key)
        elif how == "drop":
            parent.pop(key)
    return source.name, yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def compile_text(name: str, text: str):
    """Compile `text` as specs/NAME next to copies of every shipped spec (a child extends its parent)."""
    with tempfile.TemporaryDirectory() as tmp:
        for spec in SPECS:
            shutil.copy(spec, Path(tmp) / spec.name)
        (Path(tmp) / name).write_text(text)
        return compile_spec(Path(tmp) / name, Path(tmp) / "out")


@fuzz(30)
@given(mutated_specs())
def test_fuzz_spec_files(spec):
    only_our_errors(compile_text, *spec, allowed=(SpecError,))


SPEC_REGRESSIONS = {   # minimised by the fuzzer above; each was a raw exception or a hang before
    "non_text_key": ("config:", "config:\n  1: {type: int, default: 1}"),
    "repeat_not_an_integer": ("repeat: num_layers", "repeat: 2.5"),
    "extends_with_nul": ("name: llama", 'name: llama\nextends: "ll\\0ama"'),
    "extends_too_long": ("name: llama", "name: llama\nextends: " + "a/" * 3000 + "b.yaml"),
    "constant_that_fails": ("bias: attention_bias}", "bias: \"'s' + 1\"}"),
    "constant_past_int64": ("bias: mlp_bias}", "bias: 2**64}"),
    "shape_past_int64": ("x: [B, S, hidden_size]", "x: [B, S, 18446744073709551616]"),
    "float_count_past_int64": ("{op: split_heads, x: q, heads: num_heads}", "{op: split_heads, x: q, heads: 1e30}"),
}


@pytest.mark.parametrize("case", list(SPEC_REGRESSIONS))
def test_spec_regressions_are_spec_errors_at_their_line(tmp_path, case):
    old, new = SPEC_REGRESSIONS[case]
    text = (ROOT / "specs" / "llama.yaml").read_text()
    assert old in text
    result = only_our_errors(compile_text, "llama.yaml", text.replace(old, new, 1), allowed=(SpecError,))
    assert isinstance(result, SpecError)
    assert all(p.line is not None for p in result.problems), result


def test_a_spec_name_with_a_trailing_newline_fails_the_schema(tmp_path):
    text = (ROOT / "specs" / "llama.yaml").read_text().replace("name: llama", 'name: "llama\\n"', 1)
    result = only_our_errors(compile_text, "llama.yaml", text, allowed=(SpecError,))
    assert isinstance(result, SpecError) and "must be a name of letters" in str(result) and ":4:" in str(result)


# -- safetensors headers ----------------------------------------------------------------------------
DTYPE_NAMES = ["F32", "F16", "BF16", "I64", "BOOL", "U8", "F8_E4M3", "X", "", None, 3]


@st.composite
def safetensors_bytes(draw) -> bytes:
    """A file whose header is built from plausible and hostile entries, length field right or not."""
    header = {}
    for i in range(draw(st.integers(0, 4))):
        entry = {"dtype": draw(st.sampled_from(DTYPE_NAMES)),
                 "shape": draw(st.lists(st.integers(-2, 2**64), max_size=3) | JSON),
                 "data_offsets": draw(st.lists(st.integers(-1, 2**64), min_size=0, max_size=3) | JSON)}
        if draw(st.booleans()):
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(JSON)
        header[draw(st.text(max_size=6)) if draw(st.booleans()) else f"t{i}"] = entry if draw(st.booleans()) else draw(JSON)
    if draw(st.booleans()):
        header["__metadata__"] = draw(JSON)
    text = json.dumps(header).encode() if draw(st.booleans()) else draw(st.binary(max_size=64))
    length = len(text) if draw(st.booleans()) else draw(st.integers(0, 2**64 - 1))
    body = draw(st.binary(max_size=64))
    return struct.pack("<Q", length)[:draw(st.sampled_from([8, 8, 8, 4, 0]))] + text + body


def open_safetensors(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(data)
        with SafetensorsFile(path) as f:
            for name in f.tensors:
                f.get(name)


def _valid_file() -> bytes:
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(range(16))


@fuzz(250)
@example(struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000)   # nesting past the recursion limit
@given(safetensors_bytes() | st.tuples(st.integers(0, 150), st.integers(0, 255)).map(
    lambda pos_byte: (lambda d: d[:pos_byte[0]] + bytes([pos_byte[1]]) + d[pos_byte[0] + 1:])(_valid_file())))
def test_fuzz_safetensors_files(data):
    only_our_errors(open_safetensors, data, allowed=(CheckpointError,))


# -- shard indexes ----------------------------------------------------------------------------------
SHARDS = ["a.safetensors", "../a.safetensors", "/etc/passwd", "", ".", "sub/../a.safetensors", "a\\b", "a\0b",
          "missing.safetensors", "link.safetensors", 5, None, ["a.safetensors"]]


def open_index(index_text: str):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        folder.mkdir()
        (folder / "a.safetensors").write_bytes(_valid_file())
        (folder / "link.safetensors").symlink_to("/dev/zero")
        (folder / INDEX_NAME).write_text(index_text)
        with open_checkpoint(folder) as ckpt:
            for name in ckpt.tensors:
                ckpt.get(name)


@fuzz(300)
@example(json.dumps({"weight_map": {"a": ["a.safetensors"]}}))   # found by this test: a list is no shard name
@example("[" * 100_000 + "]" * 100_000)
@given(st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c"]) | st.text(max_size=4), st.sampled_from(SHARDS), max_size=4)
      .map(lambda m: json.dumps({"weight_map": m})),
    JSON.map(lambda v: json.dumps({"weight_map": v})),
    JSON.map(json.dumps),
    st.text(max_size=40)))
def test_fuzz_shard_indexes(index_text):
    only_our_errors(open_index, index_text, allowed=(CheckpointError,))


# -- artifact manifests -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return compile_spec(ROOT / "specs" / "llama.yaml", tmp_path_factory.mktemp("fuzz") / "llama").directory


def check_manifest(artifact: Path, manifest_text: str):
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = Path(tmp) / "art"
        shutil.copytree(artifact, copy_dir)
        (copy_dir / MANIFEST).write_text(manifest_text)
        complete = is_complete(copy_dir)
        manifest = read_manifest(copy_dir)
        assert complete, "a manifest read_manifest accepts, over files that match it, is complete"
        return manifest


@fuzz(150)
@given(data=st.data())
def test_fuzz_manifests(artifact, data):
    manifest = json.loads((artifact / MANIFEST).read_text())
    edited = copy.deepcopy(manifest)
    where = data.draw(st.sampled_from([p for p in paths(edited) if p]))
    parent = edited
    for part in where[:-1]:
        parent = parent[part]
    parent[where[-1]] = data.draw(JSON | st.sampled_from(["/dev/zero", "../x", "0" * 64, math.inf]))
    text = data.draw(st.sampled_from([json.dumps(edited, allow_nan=True), json.dumps(edited)[:-3], "[" * 5000]))
    only_our_errors(check_manifest, artifact, text, allowed=(ArtifactError,))
