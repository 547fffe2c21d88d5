"""Recorded decode steps (runtime/step_capture.py): a replayed generation gives the eager one's scores
bit for bit, and a step that depends on its position other than through the marked kernel arguments,
reads values into Python or draws random numbers stays eager."""
from __future__ import annotations

import pytest
import torch

from runtime import native, step_capture
from runtime.quant import quantize_model
from tests.generation_models import make, prompt

pytest.importorskip("transformers")
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {family: make(family, tmp_path_factory.mktemp(family))[1] for family in ("llama", "gpt2", "t5")}


def generate_both(monkeypatch, model, ids, **kwargs):
    """(eager, captured) generate outputs with scores and logits, and the captured run's StepCapture."""
    out = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(step_capture.ENV, mode)
        torch.manual_seed(0)
        out[mode] = model.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=None, output_scores=True,
                                   output_logits=True, return_dict_in_generate=True, **kwargs)
        assert (model.step_capture is None) == (mode == "0")
    return out["0"], out["1"], model.step_capture


def assert_same(eager, captured):
    assert torch.equal(eager.sequences, captured.sequences)
    assert len(eager.scores) == len(captured.scores) == NEW_TOKENS
    # every step's scores and logits kept as they were: the replays write their outputs in place
    for a, b in zip(eager.scores + eager.logits, captured.scores + captured.logits):
        assert torch.equal(a, b)
    assert not torch.equal(captured.logits[0], captured.logits[-1])


# T5: its decoder's relative position bias runs over the whole KV cache at a decode step, so every
# step has the same shapes (runtime/ops/sequence.py relative_buckets)
@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("pad", [0, 2])
def test_replayed_decode_steps_give_the_eager_scores_bit_for_bit(monkeypatch, models, family, pad):
    ids, mask = prompt(97, pad=pad)
    eager, captured, capture = generate_both(monkeypatch, models[family], ids, attention_mask=mask)
    assert capture.refused is None and capture.replayed >= NEW_TOKENS - 4
    assert_same(eager, captured)


@pytest.mark.parametrize("scheme", ["int8", "w4a8"])
def test_quantized_decode_steps_replay_bit_for_bit(monkeypatch, tmp_path, scheme):
    _, model = make("llama", tmp_path)
    model = quantize_model(model, {"bits": 4, "act_bits": 8, "modules_to_not_convert": []} if scheme == "w4a8" else scheme)
    ids, mask = prompt(97, pad=1)
    eager, captured, capture = generate_both(monkeypatch, model, ids, attention_mask=mask)
    assert capture.refused is None and capture.replayed > 0
    assert_same(eager, captured)


def test_bf16_decode_steps_replay_bit_for_bit(monkeypatch, tmp_path):
    import runtime
    make("llama", tmp_path)
    model = runtime.from_pretrained(tmp_path, dtype="bfloat16")
    eager, captured, capture = generate_both(monkeypatch, model, prompt(97)[0])
    assert capture.refused is None and capture.replayed > 0
    assert_same(eager, captured)


@pytest.mark.parametrize("pads, lengths", [((0, 0), (7, 9)), ((7, 1), (9, 5))])
def test_a_later_generation_of_the_same_shape_replays_after_one_recording(monkeypatch, tmp_path, pads, lengths):
    _, model = make("llama", tmp_path)
    # other values, lengths and padding (the first's padding row, False up to 7, must not leak past 5)
    first, second = (prompt(97, pad=p, seed=seed, length=n) for p, n, seed in zip(pads, lengths, (1, 2)))
    generate_both(monkeypatch, model, first[0], attention_mask=first[1])
    eager, captured, capture = generate_both(monkeypatch, model, second[0], attention_mask=second[1])
    # the first decode step, recorded, matches the step the last generation replayed
    assert capture.refused is None and capture.recorded == 1 and capture.replayed == NEW_TOKENS - 2
    assert_same(eager, captured)


@pytest.mark.parametrize("change", ["weights written in place", "linears replaced by quantized ones"])
def test_a_later_generation_after_the_weights_changed_computes_with_the_new_ones(monkeypatch, tmp_path, change):
    _, model = make("llama", tmp_path)
    generate_both(monkeypatch, model, prompt(97)[0])
    if change == "weights written in place":
        with torch.no_grad():
            for p in model.net.parameters():
                p.mul_(1.5)
        recordings = 1            # the same buffers: the last generation's step still proves this one
    else:
        model = quantize_model(model, "int8")
        recordings = 2            # other buffers: the steps are proven anew
    eager, captured, capture = generate_both(monkeypatch, model, prompt(97, seed=3)[0])
    assert capture.refused is None and capture.recorded == recordings
    assert_same(eager, captured)


def test_a_generation_of_another_shape_records_its_own_steps(monkeypatch, tmp_path):
    _, model = make("llama", tmp_path)
    generate_both(monkeypatch, model, prompt(97, batch=2)[0])
    for ids, mask in (prompt(97, batch=3), prompt(97, batch=3, pad=2), prompt(97, batch=3, length=80)):
        eager, captured, capture = generate_both(monkeypatch, model, ids, attention_mask=mask)
        assert capture.refused is None and capture.recorded == 2
        assert_same(eager, captured)


def test_sampling_under_a_seed_is_the_same_replayed(monkeypatch, models):
    eager, captured, capture = generate_both(monkeypatch, models["llama"], prompt(97)[0], do_sample=True, top_k=0)
    assert capture.replayed > 0
    assert_same(eager, captured)


def test_a_hooked_module_keeps_every_step_eager_so_its_hook_sees_them_all(monkeypatch, models):
    model = models["llama"]
    calls = []
    handle = model.net.layers[0].register_forward_hook(lambda module, args, out: calls.append(len(args)))
    try:
        model.generate(prompt(97)[0], max_new_tokens=NEW_TOKENS, eos_token_id=None)
    finally:
        handle.remove()
    assert len(calls) == NEW_TOKENS and model.step_capture is None


def test_beam_search_stays_eager_once_beams_are_reordered(monkeypatch, models):
    eager, captured, capture = generate_both(monkeypatch, models["llama"], prompt(97)[0], num_beams=3)
    assert capture.refused is not None
    assert torch.equal(eager.sequences, captured.sequences)


class Cached(torch.nn.Module):
    """A decode step over a cache buffer: written at `past` by an indexed copy, or (given `kernel`) by
    a native call told the position (a Position argument), then summed."""

    def __init__(self, kernel=None):
        super().__init__()
        self.kernel = kernel
        self.cache = torch.zeros(1, 16)

    def forward(self, x, ctx):
        past = ctx.past
        y = x * 2 + 1
        if self.kernel is None:
            self.cache[:, past] = y[:, 0]
        else:
            # stand-in for a kernel that writes at the position: the native call records it as such
            native.call(self.kernel, self.cache, native.Position(past), y)
        return {"out": self.cache.cumsum(-1)}


class Context:
    """What a recording reads of the forward context besides passing it on."""
    holds_until = None

    def __init__(self, past: int):
        self.past = past


def run_steps(net, steps: int, capacity: int = 16):
    capture, outs = step_capture.StepCapture(), []
    for past in range(1, steps + 1):
        x = torch.full((1, 1), float(past))
        outs.append(capture.run(net, [x], Context(past), past, capacity)["out"])
    return capture, outs


def test_a_position_baked_into_an_indexed_write_is_not_replayed():
    capture, outs = run_steps(Cached(), 8)
    assert capture.replayed == 0 and capture.refused is not None
    assert torch.equal(outs[-1], torch.tensor([[0.0] + [float(2 * p + 1) for p in range(1, 9)] + [0.0] * 7]).cumsum(-1))


def test_a_marked_position_moves_with_each_replayed_step():
    calls = []
    capture, _ = run_steps(Cached(kernel=lambda cache_ptr, past, y_ptr: calls.append(past)), 8)
    assert capture.refused is None and capture.replayed == 6
    assert calls == list(range(1, 9))


class Embeds(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.randn(10, 4)

    def forward(self, ids, ctx):
        return {"out": torch.nn.functional.embedding(ids, self.table) * 2}


def test_a_replayed_embedding_refuses_an_id_outside_its_table_before_reading_it():
    capture, net = step_capture.StepCapture(), Embeds()
    for past in range(1, 5):
        out = capture.run(net, [torch.tensor([[past]])], Context(past), past, 16)["out"]
        assert torch.equal(out, net.table[past][None, None] * 2)
    assert capture.replayed == 2
    with pytest.raises(RuntimeError, match="outside the embedding table's rows"):
        capture.run(net, [torch.tensor([[10]])], Context(5), 5, 16)


def test_a_step_past_the_recorded_capacity_runs_eagerly():
    capture, _ = run_steps(Cached(kernel=lambda *args: None), 8, capacity=5)
    assert capture.replayed == 2 and "did not fit" in capture.refused


@pytest.mark.parametrize("family, config", [
    ("Mistral", dict(sliding_window=3)),
    ("Gemma2", dict(sliding_window=4, head_dim=8, attn_logit_softcapping=1.0, final_logit_softcapping=1.5,
                    query_pre_attn_scalar=12))])
def test_sliding_window_steps_replay_past_the_window_bit_for_bit(monkeypatch, tmp_path, family, config):
    # the attention kernel applies the window (and the soft cap): every step reads the same padding view
    import transformers
    import runtime
    from tests.hf_checkpoints import randomize, save
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
    hf_config = getattr(transformers, f"{family}Config")(**base, **config)
    folder = save(randomize(getattr(transformers, f"{family}ForCausalLM")(hf_config)), tmp_path / family)
    model = runtime.from_pretrained(folder)
    ids, mask = prompt(97, pad=2)
    eager, captured, capture = generate_both(monkeypatch, model, ids, attention_mask=mask)
    assert capture.refused is None and capture.replayed >= NEW_TOKENS - 4
    assert_same(eager, captured)


def test_alibi_steps_replay_with_the_key_positions_over_the_whole_cache(monkeypatch, tmp_path):
    # BLOOM's key positions are supplied per step: over the KV cache's capacity at a decode step, so
    # the step's inputs keep their shapes (the attention reads the keys so far of the ALiBi bias)
    import transformers
    import runtime
    from tests.hf_checkpoints import randomize, save
    config = transformers.BloomConfig(vocab_size=97, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
    model = runtime.from_pretrained(save(randomize(transformers.BloomForCausalLM(config)), tmp_path / "bloom"))
    ids, mask = prompt(97, pad=2)
    eager, captured, capture = generate_both(monkeypatch, model, ids, attention_mask=mask)
    assert capture.refused is None and capture.replayed >= NEW_TOKENS - 4
    assert_same(eager, captured)


class Windowed(torch.nn.Module):
    """A step deciding in Python on its position, as a sliding window not yet full does (no mask
    needed): x while the keys fit the window (saying so in ctx.holds_until), x / 2 after."""

    def __init__(self, window: int):
        super().__init__()
        self.window = window

    def forward(self, x, ctx):
        if ctx.past + 1 <= self.window:
            ctx.holds_until = self.window
            return {"out": x * 1.0}
        return {"out": x * 0.5}


def test_a_choice_held_until_a_position_ends_the_replay_there():
    capture, outs = run_steps(Windowed(window=5), 8)
    # steps at past 1 and 2 recorded, 3 and 4 (5 keys) replayed; the step with 6 keys runs eagerly
    assert capture.replayed == 2 and "did not fit" in capture.refused
    assert all(torch.equal(out, torch.tensor([[p * (1.0 if p + 1 <= 5 else 0.5)]])) for p, out in zip(range(1, 9), outs))


class Scaled(torch.nn.Module):
    """A step multiplying by a constant it makes from Python data each time (torch.tensor(value), as
    Gemma's embedding scale): the constant `scale(past)`."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x, ctx):
        return {"out": x * torch.tensor(self.scale(ctx.past), dtype=x.dtype)}


def test_a_constant_made_from_python_data_each_step_is_replayed_while_it_stays_the_same():
    capture, outs = run_steps(Scaled(lambda past: 8.0 ** 0.5), 8)
    assert capture.refused is None and capture.replayed == 6
    assert all(torch.equal(out, torch.tensor([[p * 8.0 ** 0.5]])) for p, out in zip(range(1, 9), outs))
    # a constant that follows the position: two recordings differ, every step eager and right
    capture, outs = run_steps(Scaled(lambda past: float(past)), 8)
    assert capture.replayed == 0 and capture.refused is not None
    assert all(torch.equal(out, torch.tensor([[float(p * p)]])) for p, out in zip(range(1, 9), outs))


class ScaledInPlace(torch.nn.Module):
    """A constant made from Python data, then written in place by the step."""

    def forward(self, x, ctx):
        scale = torch.tensor(3.0)
        scale.add_(x[0, 0] * 0 + 1)           # 4 at every step, starting from 3 each time
        return {"out": x * scale}


def test_a_constant_the_step_writes_in_place_starts_from_its_value_at_each_replay():
    capture, outs = run_steps(ScaledInPlace(), 8)
    assert capture.refused is None and capture.replayed == 6
    assert all(torch.equal(out, torch.tensor([[4.0 * p]])) for p, out in zip(range(1, 9), outs))
