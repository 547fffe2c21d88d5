"""Quantized mixtures of experts: a grouped linear's experts stored quantized (QuantGroupedLinear),
each expert exactly as quantizing it alone, its products those of the dequantized weights on every
CPU path, only the picked experts computed; the router kept in float by default; Mixtral and
Qwen2-MoE from Transformers' initialisation close to fp32, decoding consistently, saved and
reloaded without quantizing again."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import runtime
from runtime.ops import FusedLinear, GroupedLinear, Linear
from runtime.ops import grouped as grouped_ops
from runtime.quant import QuantLinear, Scheme, dequantize, load_quantized, quantize_activations, quantize_model, \
    save_quantized
from runtime.quant import cpu
from runtime.quant import native as native_quant
from runtime.quant import linear as quant_linear
from runtime.quant.linear import QuantGroupedLinear
from compiler.pipeline import compile_spec
from runtime.errors import CheckpointError
from tests.family_parity import random_ids

transformers = pytest.importorskip("transformers")
SCHEMES = [Scheme("int8"), Scheme("int4", 32, True), Scheme("int4", 64, False), Scheme("int8", act_bits=8),
           Scheme("int4", 32, True, 8)]


@pytest.fixture
def path():
    yield cpu.force
    cpu.force(None)


def grouped(num=5, k=128, out=24, bias=True, seed=0) -> GroupedLinear:
    torch.manual_seed(seed)
    g = GroupedLinear(num, k, out, bias=bias)
    with torch.no_grad():
        g.weight.normal_(0, 0.05)
    return g


def reference(x, index, q: QuantGroupedLinear):
    """Each pick's row through its expert's dequantized weight, in float64."""
    w = dequantize(q.stored(), q.scheme).double()                      # [num, out, in]
    rows = x if x.dim() == index.dim() + 1 else x.unsqueeze(-2).expand(*index.shape, x.shape[-1])
    rows = (quantize_activations(rows) if q.scheme.act_bits else rows).double()
    y = torch.einsum("...i,...oi->...o", rows, w[index])
    return (y if q.bias is None else y + q.bias.double()[index]).float()


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_each_expert_is_stored_exactly_as_quantizing_it_alone(scheme):
    g = grouped()
    q = QuantGroupedLinear.from_float(g, scheme)
    for e in range(g.num):
        alone = QuantLinear.from_float(torch.nn.Linear(128, 24, bias=False), scheme)
        alone.set_stored(quant_linear.quantize(g.weight[e], scheme))
        for name, t in alone.stored().items():
            assert torch.equal(q.stored()[name][e], t), (e, name)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("kernel", ["native", "dequant"])
@pytest.mark.parametrize("per_pick", [False, True])
def test_quantized_experts_compute_the_dequantized_product_of_each_pick(scheme, kernel, per_pick, path):
    path(kernel)
    q = QuantGroupedLinear.from_float(grouped(), scheme)
    torch.manual_seed(1)
    index = torch.randint(0, 5, (3, 7, 2))
    x = torch.randn(3, 7, 2, 128) if per_pick else torch.randn(3, 7, 128)
    got = q(x, index)
    assert got.shape == (3, 7, 2, 24)
    torch.testing.assert_close(got, reference(x, index, q), rtol=0, atol=3e-5)


def test_bf16_rows_through_quantized_experts_stay_within_bf16_of_the_reference():
    q = QuantGroupedLinear.from_float(grouped(bias=False), Scheme("int4", 32, True))
    torch.manual_seed(2)
    index = torch.randint(0, 5, (4, 2))
    x = torch.randn(4, 128)
    got = q(x.bfloat16(), index)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference(x.bfloat16().float(), index, q), rtol=1e-2, atol=1e-2)


def test_only_the_experts_some_row_picks_are_computed():
    q = QuantGroupedLinear.from_float(grouped(num=6), Scheme("int4", 32, True))
    index = torch.tensor([[1, 4], [4, 1], [1, 1]])
    q(torch.randn(3, 128), index)
    assert dict(q.expert_rows) == {1: 4, 4: 2}
    assert {key for key in q._cache if isinstance(key, tuple) and key[0] == "expert"} == {("expert", 1), ("expert", 4)}
    with pytest.raises(IndexError, match=r"expert index out of range \[0, 6\)"):
        q(torch.randn(1, 128), torch.tensor([[6, 0]]))


@pytest.mark.parametrize("scheme", SCHEMES + [None], ids=lambda s: "f32" if s is None else s.name)
@pytest.mark.parametrize("out", [32, 24])
@pytest.mark.parametrize("per_pick", [False, True])
@pytest.mark.parametrize("tokens", [4, 20])
def test_a_few_picks_take_one_c_call_that_computes_what_the_sorted_path_computes(scheme, out, per_pick, tokens,
                                                                                 monkeypatch):
    """Up to grouped.NATIVE_PICKS picks (a decode step, a short prompt) are computed by one call of
    the C kernel, which reads the experts from the index and runs each picked expert once over its
    rows (20 tokens: up to 11 rows an expert); more go through the sorted path. The same numbers."""
    layer = grouped(out=out, bias=False)
    if scheme is not None:
        layer = QuantGroupedLinear.from_float(layer, scheme)
    torch.manual_seed(3)
    index = torch.randint(0, 5, (tokens, 2))
    x = torch.randn(tokens, 2, 128) if per_pick else torch.randn(tokens, 128)
    calls = []
    real = grouped_ops.native.call
    monkeypatch.setattr(grouped_ops.native, "call", lambda kernel, *a: calls.append(kernel.__name__) or real(kernel, *a))
    with torch.no_grad():               # a float weight needing a gradient takes the sorted path
        few = layer(x, index)
        # int4/int8 experts of 24 rows do not fill the interleaved layout's 16-row tiles: one layout each
        stacked = scheme is None or out % 16 == 0 or not native_quant.interleaved()
        assert calls == ["gs_grouped"] if stacked else "gs_grouped" not in calls
        monkeypatch.setattr(grouped_ops, "NATIVE_PICKS", 0)
        torch.testing.assert_close(few, layer(x, index), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", [None, Scheme("int4", 32, True)], ids=["bf16", "int4"])
def test_bf16_picks_take_one_c_call_that_computes_what_the_sorted_path_computes(scheme, monkeypatch):
    layer = grouped(out=32, bias=False).bfloat16()
    if scheme is not None:
        layer = QuantGroupedLinear.from_float(layer, scheme)
    torch.manual_seed(4)
    index, x = torch.randint(0, 5, (3, 2)), torch.randn(3, 128).bfloat16()
    calls = []
    real = grouped_ops.native.call
    monkeypatch.setattr(grouped_ops.native, "call", lambda kernel, *a: calls.append(kernel.__name__) or real(kernel, *a))
    with torch.no_grad():
        few = layer(x, index)
        assert calls == ["gs_grouped"] and few.dtype == torch.bfloat16
        monkeypatch.setattr(grouped_ops, "NATIVE_PICKS", 0)
        torch.testing.assert_close(few, layer(x, index), rtol=0, atol=0)


def test_picks_that_need_a_gradient_take_the_sorted_path():
    layer = grouped(bias=False)
    x = torch.randn(2, 128, requires_grad=True)
    layer(x, torch.tensor([[0, 3], [3, 1]])).sum().backward()
    assert x.grad is not None and layer.weight.grad[[0, 1, 3]].abs().sum() > 0 and not layer.weight.grad[2].any()


def test_a_recorded_decode_step_of_a_mixture_replays_the_experts_its_router_picks(moe, monkeypatch):
    folder, ids, mask, _ = moe
    for scheme in (None, "int4"):
        model = runtime.from_pretrained(folder, quantization=scheme)
        tokens = model.generate(ids, attention_mask=mask, max_new_tokens=12)
        assert model.step_capture.refused is None and model.step_capture.replayed >= 4
        monkeypatch.setenv("GRAPHSPEC_STEP_CAPTURE", "0")
        assert model.generate(ids, attention_mask=mask, max_new_tokens=12).tolist() == tokens.tolist()
        monkeypatch.delenv("GRAPHSPEC_STEP_CAPTURE")


def test_a_batched_decode_step_of_a_mixture_replays_past_a_decode_steps_picks(moe, monkeypatch):
    # 12 rows, top 2: 24 picks a step, several an expert, one C call (before: the sorted path, eager)
    folder = moe[0]
    ids = random_ids(300, 12, 6)
    mask = torch.ones_like(ids)
    mask[3, :2] = 0
    model = runtime.from_pretrained(folder, quantization="int4")
    tokens = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    assert model.step_capture.refused is None and model.step_capture.replayed >= 4
    monkeypatch.setenv("GRAPHSPEC_STEP_CAPTURE", "0")
    assert model.generate(ids, attention_mask=mask, max_new_tokens=8).tolist() == tokens.tolist()


@pytest.mark.parametrize("make", [
    lambda seed: QuantLinear.from_float(torch.nn.Linear(128, 24), Scheme("int4", 32, True)) if
    torch.manual_seed(seed) else None,
    lambda seed: QuantGroupedLinear.from_float(grouped(seed=seed), Scheme("int4", 32, True)),
], ids=["linear", "experts"])
def test_weights_loaded_into_a_quantized_module_replace_the_kernels_layouts(make, path):
    """load_state_dict overwrites the stored tensors in place; a layout built from the old ones
    (the native kernels' interleaved copy, an expert's views) must not survive it."""
    path("native")
    old, new = make(0), make(1)
    index = torch.tensor([[0, 3], [2, 3]])
    x = torch.randn(2, 128)
    args = (x, index) if isinstance(old, QuantGroupedLinear) else (x,)
    want = new(*args)
    old(*args)                                       # builds the layouts of the old weights
    old.load_state_dict(new.state_dict())
    torch.testing.assert_close(old(*args), want, rtol=0, atol=0)
    replaced = make(2)
    for name, t in replaced.stored().items():       # a loader assigning tensors (runtime/quant/io.py)
        setattr(old, name, t)
    if replaced.bias is not None:
        old.bias = replaced.bias
    torch.testing.assert_close(old(*args), replaced(*args), rtol=0, atol=0)


# Transformers-initialised mixtures of experts (normal(0, 0.02), norms 1)
SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
             tie_word_embeddings=False)
FAMILIES = {
    "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(
        **SHAPE, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": lambda: transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
        **SHAPE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=96)),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def moe(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    FAMILIES[request.param]().eval().save_pretrained(folder)
    ids = random_ids(300, 2, 12)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0                                   # a left-padded row
    with torch.no_grad():
        return folder, ids, mask, runtime.from_pretrained(folder)(ids, attention_mask=mask).logits


def cosine(a, b, mask):
    keep = mask.bool()
    return F.cosine_similarity(a[keep].flatten(), b[keep].flatten(), dim=0).item()


@pytest.mark.parametrize("scheme, min_cos", [("int8", 0.999), ("w8a8", 0.999), ("int4", 0.99), ("w4a8", 0.99)])
def test_a_quantized_mixture_of_experts_stays_close_to_fp32_with_its_router_in_float(moe, scheme, min_cos):
    folder, ids, mask, want = moe
    model = runtime.from_pretrained(folder, quantization=scheme)
    roles = model.load_report["quantized"]
    assert {p for p, r in roles.items() if r == "experts"} == \
           {f"layers.{i}.mlp.experts.{w}" for i in range(2) for w in ("w1", "w2", "w3")}
    assert all(isinstance(model.net.get_submodule(p), QuantGroupedLinear) for p, r in roles.items() if r == "experts")
    assert not any(r == "router" for r in roles.values())
    assert not isinstance(model.net.layers[0].mlp.gate, QuantLinear)
    assert cosine(model(ids, attention_mask=mask).logits, want, mask) >= min_cos


def test_greedy_decoding_of_a_quantized_mixture_equals_repeated_full_forwards(moe):
    folder, ids, _, _ = moe
    model = runtime.from_pretrained(folder, quantization="int4")
    prompt = ids[:1, :7]
    tokens = model.generate(prompt, max_new_tokens=5)
    seq = prompt
    for _ in range(5):
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert tokens.tolist() == seq.tolist()


def test_a_saved_quantized_mixture_reloads_with_the_same_logits_without_quantizing(moe, tmp_path, monkeypatch):
    folder, ids, mask, _ = moe
    model = runtime.from_pretrained(folder, quantization={"bits": 4, "group_size": 32, "sym": False,
                                                          "modules_to_not_convert": []})
    assert "router" in model.load_report["quantized"].values()
    want = model(ids, attention_mask=mask).logits
    save_quantized(model, tmp_path)
    monkeypatch.setattr(quant_linear, "quantize", lambda *a, **k: pytest.fail("quantized again while loading"))
    loaded = runtime.from_pretrained(tmp_path)
    assert loaded.load_report["quantized"] == model.load_report["quantized"]
    torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, want, rtol=0, atol=0)


def test_a_saved_mixture_loads_on_an_artifact_compiled_with_its_config_and_otherwise_names_that_compile(moe, tmp_path):
    folder, ids, mask, _ = moe
    model = runtime.from_pretrained(folder, quantization={"bits": 8, "modules_to_not_convert": []})
    save_quantized(model, tmp_path / "saved")
    spec = f"specs/{model.interface.name}.yaml"
    artifact = compile_spec(spec, tmp_path / "artifact", {"quant": model.quantization_config}).directory
    loaded = load_quantized(tmp_path / "saved", artifact)
    torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits,
                               rtol=0, atol=0)
    if model.interface.name == "qwen2_moe":
        # compiled without quantization its router is fused with the shared expert's gate
        with pytest.raises(CheckpointError, match=r"does not have; compile the spec with this checkpoint's "
                                                  r"quantization_config \(graphspec compile --quant"):
            load_quantized(tmp_path / "saved", compile_spec(spec).directory)


def test_quantizing_a_float_model_reads_experts_and_router_off_the_module_types(moe):
    folder = moe[0]
    # compiled without quantization, Qwen2-MoE's router is fused with its shared expert's gate (one
    # matmul of the same rows): the fused linear holds the router, so it is the router
    router = "layers.1.mlp." + ("gate_shared_expert_gate" if "qwen2_moe" in folder.name else "gate")
    model = quantize_model(runtime.from_pretrained(folder), {"bits": 8, "modules_to_not_convert": []})
    roles = model.load_report["quantized"]
    assert roles[router] == "router" and roles["layers.1.mlp.experts.w2"] == "experts"
    kept = quantize_model(runtime.from_pretrained(folder), "int8").load_report["quantized"]
    assert router not in kept and kept["layers.1.mlp.experts.w2"] == "experts"


@pytest.mark.parametrize("x_shape", [(2, 128), (3, 64), (3, 256)], ids=["fewer rows", "narrower", "wider"])
def test_rows_that_do_not_fit_the_index_or_the_weights_are_refused_not_read_past(x_shape):
    layer = grouped(out=32, bias=False).requires_grad_(False)
    index = torch.tensor([[0, 1], [2, 3], [4, 0]])
    quantized = QuantGroupedLinear.from_float(layer, Scheme("int4", 32, True))
    for module in (layer, quantized):
        with pytest.raises((IndexError, RuntimeError, ValueError)):
            module(torch.randn(*x_shape), index)


def test_a_model_copied_or_pickled_after_generating_generates_the_same_tokens(moe, tmp_path):
    """The kernels' derived layouts, the C picks' words and the last generation's recorded step hold
    kernel handles and pointers: a copy (copy.deepcopy, torch.save) drops them and builds its own."""
    folder, ids, mask, _ = moe
    for scheme in (None, "int4"):
        model = runtime.from_pretrained(folder, quantization=scheme)
        want = model.generate(ids, attention_mask=mask, max_new_tokens=6).tolist()
        twin = copy.deepcopy(model)
        torch.save(model, tmp_path / "model.pt")
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
        for other in (twin, loaded, model):
            assert other.generate(ids, attention_mask=mask, max_new_tokens=6).tolist() == want


def test_the_input_gradient_of_quantized_experts_goes_through_each_picked_experts_weight():
    q = QuantGroupedLinear.from_float(grouped(out=32, bias=False), Scheme("int4", 32, True))
    index = torch.tensor([[0, 3], [3, 1], [4, 0]])
    x = torch.randn(3, 128, requires_grad=True)
    weights = torch.randn(3, 2, 32)
    (q(x, index) * weights).sum().backward()
    w = dequantize(q.stored(), q.scheme)                         # [num, out, in]
    want = torch.einsum("tko,tkoi->ti", weights, w[index])
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-5)


def dequantized_twin(model):
    """A copy of `model` whose quantized modules are float ones holding their dequantized weights."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.net.named_modules()):
        if isinstance(module, QuantGroupedLinear):
            float_module = GroupedLinear(module.num, module.in_features, module.out_features, bias=False)
        elif isinstance(module, QuantLinear):
            float_module = (FusedLinear(module.in_features, module.parts, bias=module.bias is not None) if module.parts
                            else Linear(module.in_features, module.out_features, bias=module.bias is not None))
        else:
            continue
        with torch.no_grad():
            float_module.weight.copy_(module.dequantized().view_as(float_module.weight))
            if module.bias is not None:
                float_module.bias.copy_(module.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(twin.net.get_submodule(parent) if parent else twin.net, leaf, float_module)
    return twin


def test_a_quantized_mixture_trains_what_comes_before_its_experts_as_its_dequantized_twin_would(moe):
    folder, ids, _, _ = moe
    quantized = runtime.from_pretrained(folder, quantization="int4").train()
    twin = dequantized_twin(quantized)
    for model in (quantized, twin):
        model(ids[:1, :3], labels=ids[:1, :3]).loss.backward()
    torch.testing.assert_close(quantized.net.embed.weight.grad, twin.net.embed.weight.grad, rtol=1e-4, atol=1e-5)
