"""interface.json: what the runtime reads instead of the spec. Every expression of every shipped spec
comes back from its text as the same expression; a malformed file is an ArtifactError naming the
file and the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.pipeline import compile_spec
from compiler.spec import load_spec
from compiler.weight_rules import model_tensors
from runtime.errors import ArtifactError
from runtime.expr import Expr, parse_expr
from runtime.interface import parse_interface, read_interface

SPECS = sorted(Path("specs").glob("*.yaml"))


def same(a, b) -> bool:
    """Expressions equal (by their text, which parses back to the same text), literals equal."""
    if isinstance(a, Expr) or isinstance(b, Expr):
        return isinstance(a, Expr) and isinstance(b, Expr) and a == b and str(parse_expr(str(a))) == str(a)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("iface")
    return {p.stem: compile_spec(p, out / p.stem) for p in SPECS}


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_every_expression_of_every_shipped_spec_round_trips_through_interface_json(compiled, spec_path):
    spec = load_spec(spec_path)
    iface = read_interface(compiled[spec_path.stem].directory)
    assert iface.name == spec.name and iface.base_prefix == spec.base_prefix and iface.matches == spec.matches
    assert list(iface.config) == list(spec.config)
    for name, entry in spec.config.items():
        got = iface.config[name]
        assert (got.hf, got.type, got.has_default) == (tuple(entry.hf), entry.type, entry.has_default)
        assert same(got.default, entry.default), name
    assert same([(c.that, c.message) for c in iface.checks], [(c.that, c.message) for c in spec.checks])
    assert len(iface.weights) == len(spec.weights)
    for got, rule in zip(iface.weights, spec.weights):
        assert (got.sources, got.targets, got.ignore) == (tuple(rule.sources), tuple(rule.targets), rule.ignore)
        assert same(got.when, rule.when) and same(list(got.transforms), rule.transforms)
    tensors = model_tensors(compiled[spec_path.stem].ir)
    assert [t.name for t in iface.tensors] == [t.name for t in tensors]
    for got, t in zip(iface.tensors, tensors):
        assert same(got.shape, t.shape) and same(got.when, t.when) and same(got.repeat, t.repeat)
        assert got.tied_to == t.tied_to and got.head == t.head
        assert same(got.tied_when, t.tied_when if t.tied_to else None)
    assert {n: (h.architectures, h.outputs) for n, h in iface.heads.items()} == {
        n: (tuple(h.architectures), tuple(h.block.outputs)) for n, h in spec.heads.items()}
    for i, decl in zip(iface.contract.inputs, spec.model.inputs.values()):
        assert i.name == decl.name and same(i.shape, decl.shape)


def test_the_manifest_hashes_interface_json(compiled):
    result = compiled["llama"]
    assert "interface.json" in result.manifest["files"]


def write(tmp_path, data) -> Path:
    (tmp_path / "interface.json").write_text(json.dumps(data))
    return tmp_path


def llama_interface(compiled) -> dict:
    return json.loads((compiled["llama"].directory / "interface.json").read_text())


@pytest.mark.parametrize("edit,key,words", [
    (lambda d: d.pop("contract"), "contract", "missing"),
    (lambda d: d["config"][0].update(type="integer"), "config[0].type", "expected one of int"),
    (lambda d: d["config"][0].update(hf="vocab_size"), "config[0].hf", "expected list, got str"),
    (lambda d: d["checks"][0].update(that="num_heads %% 2"), "checks[0].that", "bad expression"),
    (lambda d: d["weights"][0].update(transforms=[{"rotate": 1}]), "weights[0].transforms[0]", "unknown or malformed transform"),
    (lambda d: d["tensors"][0].update(shape=[3]), "tensors[0].shape[0]", "expected an expression"),
    (lambda d: d["contract"]["inputs"][1].update(source="magic"), "contract.inputs[1].source", "expected one of caller"),
    (lambda d: d["contract"]["masks"].update(attention_mask="S_ENC"), "contract.masks.attention_mask", "sequence of a caller input"),
    (lambda d: d["contract"]["generate"].update(tokens="ids"), "contract.generate.tokens", "not an input"),
    (lambda d: d.update(format=1), "format", "reads interface format 2"),
    (lambda d: d["contract"]["inputs"][0].update(below="vocab_size"), "contract.inputs[0].below", "expected list"),
    (lambda d: d["contract"]["inputs"][0].update(below=["vocab_size +"]), "contract.inputs[0].below[0]", "bad expression"),
    (lambda d: d["contract"]["generate"].update(cache_width=7), "contract.generate.cache_width", "expected str"),
    (lambda d: d["value_checks"][0].update(check="exec"), "value_checks[0].check", "expected one of positive"),
    (lambda d: d["value_checks"][0].pop("at"), "value_checks[0].at", "missing"),
])
def test_a_malformed_interface_is_an_artifact_error_naming_file_and_key(compiled, tmp_path, edit, key, words):
    data = llama_interface(compiled)
    edit(data)
    with pytest.raises(ArtifactError) as info:
        read_interface(write(tmp_path, data))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'interface.json'}: {key}: ") and words in message, message


def test_an_interface_that_is_not_json_or_absent_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="interface.json: missing"):
        read_interface(tmp_path)
    (tmp_path / "interface.json").write_text("{")
    with pytest.raises(ArtifactError, match=r"interface.json:1:2: not valid JSON"):
        read_interface(tmp_path)
    with pytest.raises(ArtifactError, match=r"\(top level\): expected a JSON object"):
        parse_interface([1, 2])
