"""The quantization schemes as their docstring defines them: packing, error bounds, round trips."""
import pytest
import torch

from runtime.quant import QuantConfig, Scheme, dequantize, quantize, quantize_activations
from runtime.quant.schemes import pack_int4, unpack_int4

SCHEMES = [Scheme("int8"), Scheme("int4", 32, True), Scheme("int4", 64, False), Scheme("int4", 128, True),
           Scheme("int4", 128, False)]


def weight(n=48, k=256, seed=0, std=0.02):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * std


def group_view(t, scheme):
    return t if scheme.kind == "int8" else t.view(t.shape[0], -1, scheme.group)


def test_int4_packing_puts_even_columns_in_the_low_nibble():
    q = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.tolist() == [[1 | 2 << 4, 15]]
    assert torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_stored_tensors_have_the_documented_shapes_and_dtypes(scheme):
    stored = quantize(weight(), scheme)
    want = scheme.packed_shapes(48, 256)
    assert {n: (tuple(t.shape), t.dtype) for n, t in stored.items()} == {n: (s, getattr(torch, d)) for n, (s, d) in want.items()}


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_each_weight_is_within_half_a_step_of_its_dequantized_value(scheme):
    w = weight(std=0.05)
    stored = quantize(w, scheme)
    err = group_view((w - dequantize(stored, scheme)).abs(), scheme)
    step = stored["scales"].float().abs()[..., None] if scheme.kind == "int4" else stored["scales"][:, None]
    # rounding to the nearest level: half a step (fp32 division and multiplication add a few ulps)
    near = err <= step * (0.5 + 1e-5)
    if scheme.kind == "int4" and scheme.symmetric:
        # the extreme takes level -8; on the other side the top level is 7, so a value within half a
        # step of the extreme's magnitude there rounds to 7: up to a whole step off, and only those
        level = group_view(w, scheme) / stored["scales"].float()[..., None]
        assert bool((err[~near] <= step.expand_as(err)[~near] * (1 + 1e-5)).all())
        assert bool((level[~near] > 7.5 - 1e-4).all())
        assert bool(near.float().mean() > 0.99)
    else:
        assert bool(near.all())


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_quantizing_the_dequantized_weight_gives_the_same_integers(scheme):
    stored = quantize(weight(seed=3), scheme)
    again = quantize(dequantize(stored, scheme), scheme)
    assert torch.equal(again["qweight"], stored["qweight"])
    torch.testing.assert_close(again["scales"], stored["scales"], rtol=2e-3 if scheme.kind == "int4" else 1e-6, atol=0)
    if "zeros" in stored:
        assert torch.equal(again["zeros"], stored["zeros"])


def test_int8_scale_is_the_row_maximum_over_127_and_the_extremes_are_exact():
    w = weight()
    stored = quantize(w, Scheme("int8"))
    torch.testing.assert_close(stored["scales"], w.abs().amax(1) / 127, rtol=0, atol=0)
    extreme = w.abs().argmax(1)
    assert stored["qweight"].gather(1, extreme[:, None]).abs().eq(127).all()


@pytest.mark.parametrize("group", [32, 128])
def test_symmetric_int4_puts_each_groups_extreme_on_level_minus_8_with_its_sign(group):
    w = weight(n=6, k=256)
    w[0, :group] = w[0, :group].abs()             # an all-positive group: its scale is negative
    scheme = Scheme("int4", group, True)
    stored = quantize(w, scheme)
    groups = w.view(6, -1, group)
    extreme = groups.gather(2, groups.abs().argmax(2, keepdim=True))
    scales = stored["scales"].float()
    torch.testing.assert_close(scales, (extreme.squeeze(2) / -8).half().float(), rtol=0, atol=0)
    assert bool((scales[0, 0] < 0) and (scales.sign() == -extreme.squeeze(2).sign()).all())
    levels = unpack_int4(stored["qweight"]).view(6, -1, group).long() - 8
    assert levels.gather(2, groups.abs().argmax(2, keepdim=True)).eq(-8).all()
    assert levels.amin() == -8 and levels.amax() == 7


def test_asymmetric_int4_keeps_zero_exact_and_uses_the_whole_range_of_a_positive_group():
    w = weight(n=4, k=64).abs() + 0.01        # every group strictly positive: the range is [0, max]
    w[0, :32] = 0.0                           # and one group of zeros
    scheme = Scheme("int4", 32, False)
    stored = quantize(w, scheme)
    back = dequantize(stored, scheme)
    assert torch.equal(back[0, :32], torch.zeros(32))
    assert stored["zeros"][1:].eq(0).all()                      # lo = 0 -> zero point 0
    assert unpack_int4(stored["qweight"])[1:].amax(1).eq(15).all()


def test_a_row_of_zeros_quantizes_to_zeros_in_every_scheme():
    w = weight(n=3, k=128)
    w[1] = 0
    for scheme in SCHEMES:
        assert torch.equal(dequantize(quantize(w, scheme), scheme)[1], torch.zeros(128))


def test_int4_dequantizes_gathered_rows_like_the_whole_table():
    scheme = Scheme("int4", 32, False)
    stored = quantize(weight(n=10, k=64), scheme)
    ids = torch.tensor([[3, 3, 9], [0, 1, 2]])
    rows = dequantize({n: t[ids] for n, t in stored.items()}, scheme)
    assert torch.equal(rows, dequantize(stored, scheme)[ids])


@pytest.mark.parametrize("k", [48, 100])
def test_int4_refuses_input_features_not_a_multiple_of_the_group(k):
    with pytest.raises(ValueError, match=rf"layers.0.up: {k} input features are not a multiple of the int4 group size 32"):
        quantize(weight(k=k), Scheme("int4", 32), "layers.0.up")


def test_int4_refuses_scales_beyond_fp16():
    with pytest.raises(ValueError, match="exceeds fp16's range"):
        quantize(torch.full((2, 32), 1e6), Scheme("int4", 32))


@pytest.mark.parametrize("args, message", [
    (("int8", 32), "int8 is per output channel"),
    (("int4", 16), "int4 group_size must be one of"),
    (("int3", None), "quantization must be 'int8' or 'int4'"),
])
def test_bad_schemes_say_what_is_allowed(args, message):
    with pytest.raises(ValueError, match=message):
        Scheme(*args)


def test_quantization_config_round_trips_through_its_transformers_style_dict():
    config = QuantConfig.parse({"bits": 4, "group_size": 128, "sym": False, "modules_to_not_convert": ["layers.0.*"]})
    assert config.scheme == Scheme("int4", 128, False) and config.skip == ("layers.0.*",)
    assert QuantConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["quant_method"] == "graphspec"
    assert QuantConfig.parse("int4").scheme == Scheme("int4", 32, True)
    assert QuantConfig.parse("int8").to_dict()["group_size"] is None


def test_the_output_embedding_and_a_router_stay_in_float_unless_the_skip_list_is_emptied():
    default = QuantConfig.parse("int4")
    assert default.skip == ("lm_head", "router") and default.to_dict()["modules_to_not_convert"] == ["lm_head", "router"]
    assert default.skipped("output", "lm_head") and default.skipped("layers.0.mlp.gate", "router")
    assert not default.skipped("layers.0.mlp.up", "linear") and not default.skipped("layers.0.mlp.experts", "experts")
    everything = QuantConfig.parse({"bits": 4, "modules_to_not_convert": []})
    assert not everything.skipped("lm_head", "lm_head") and not everything.skipped("layers.0.mlp.gate", "router")
    assert QuantConfig.parse({"bits": 8, "modules_to_not_convert": ["layers.0.*"]}).skipped("layers.0.attn.o", "linear")


@pytest.mark.parametrize("data, message", [
    ({"bits": 3}, "'bits' must be 8 or 4"),
    ({"bits": 4, "group_size": 48}, "'group_size' must be one of"),
    ({"bits": 8, "group_size": 32}, "'group_size' must be null for 8 bits"),
    ({"bits": 8, "sym": False}, "8 bits is symmetric only"),
    ({"bits": 4, "desc_act": True}, "unknown key\\(s\\) 'desc_act'"),
    ({"bits": 4, "quant_method": "gptq", "desc_act": False}, "quant_method 'gptq' is another library's format, "
                                                             "which graphspec does not read or produce"),
    ({"load_in_8bit": True}, r"a bitsandbytes config \(8-bit\) asks for that library's formats.*quantization='int8'"),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, r"a bitsandbytes config \(4-bit\).*'group_size': 64"),
    ({"bits": 4, "quantize_embedding": "yes"}, "'quantize_embedding' must be true or false"),
    ({"bits": 4, "modules_to_not_convert": "lm_head"}, "'modules_to_not_convert' must be a list"),
    ({"bits": 4, "act_bits": 4}, "'act_bits' must be 8 or null"),
    ({"bits": 4, "lm_head_bits": 6}, "'lm_head_bits' must be 8, 4 or null"),
    ({"bits": 8, "act_bits": True}, "'act_bits' must be 8 or null"),
])
def test_a_bad_quantization_config_names_the_key(data, message):
    with pytest.raises(ValueError, match=f"quantization_config: {message}"):
        QuantConfig.parse(data)


def test_a_config_object_is_read_through_its_dict_as_transformers_configs_are():
    class GPTQLike:
        def to_dict(self):
            return {"bits": 4, "group_size": 128, "sym": False}
    assert QuantConfig.parse(GPTQLike()) == QuantConfig.parse({"bits": 4, "group_size": 128, "sym": False})


def test_an_unknown_shorthand_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown scheme 'int2'; use one of int8, int4"):
        QuantConfig.parse("int2")


def test_int8_activation_schemes_round_trip_and_weight_only_configs_write_no_act_bits():
    w4a8 = QuantConfig.parse("w4a8")
    assert w4a8.scheme == Scheme("int4", 32, True, act_bits=8) and w4a8.scheme.name == "int4-g32-sym-a8"
    assert w4a8.to_dict()["act_bits"] == 8 and QuantConfig.from_dict(w4a8.to_dict()) == w4a8
    assert QuantConfig.parse({"bits": 8, "act_bits": 8}).scheme == QuantConfig.parse("w8a8").scheme
    assert "act_bits" not in QuantConfig.parse("int8").to_dict()


def test_activations_are_quantized_per_block_of_32_like_an_int8_weight_row():
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(1))
    x[1, 32:64] = 0                               # an all-zero block stays zero
    got = quantize_activations(x)
    blocks = x.view(3, 3, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    want = torch.where(d == 0, 0.0, torch.round(blocks / torch.where(d == 0, 1.0, d)).clamp(-127, 127) * d)
    assert torch.equal(got, want.view(3, 96))
    assert bool((got[1, 32:64] == 0).all())
    # each value within half a step of its block's scale
    assert bool(((got - x).abs().view(3, 3, 32) <= d * (0.5 + 1e-5)).all())


def test_a_width_that_is_no_multiple_of_the_activation_block_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="layers.0.up: 80 input features are not a multiple of 32.*act_bits null"):
        quantize(weight(k=80), Scheme("int8", act_bits=8), "layers.0.up")


def test_the_lm_head_may_keep_more_bits_than_the_other_linears():
    config = QuantConfig.parse({"bits": 4, "act_bits": 8, "lm_head_bits": 8, "modules_to_not_convert": []})
    assert config.scheme_for("lm_head") == Scheme("int8", act_bits=8)
    assert config.scheme_for("linear") == config.scheme_for("embedding") == Scheme("int4", 32, True, 8)
    assert QuantConfig.from_dict(config.to_dict()) == config and config.to_dict()["lm_head_bits"] == 8
    # the scheme's own bits say nothing more: the same config as leaving the key out
    assert QuantConfig.parse({"bits": 4, "lm_head_bits": 4}) == QuantConfig.parse({"bits": 4})
