"""Fine-tuning through the public API against Transformers: the same losses step by step under AdamW,
dropout only in train mode, gradients of the fused compile equal to the unfused one's, gradient
checkpointing giving the same gradients."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from tests.family_parity import random_ids
from tests.hf_checkpoints import randomize, save
from tests.tiny_configs import BERT, LLAMA, T5

transformers = pytest.importorskip("transformers")

STEPS = 5
LOSS_TOL = 1e-5

NO_DROPOUT_BERT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def losses(model, batch: dict, steps: int = STEPS) -> list[float]:
    """Loss of each of `steps` AdamW steps on the same batch, in train mode."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


def assert_same_losses(ours, ref, ours_batch, ref_batch):
    got, want = losses(ours, ours_batch), losses(ref, ref_batch)
    assert max(abs(a - b) for a, b in zip(got, want)) <= LOSS_TOL, (got, want)
    assert want[-1] < want[0], "the steps must move the loss for the comparison to mean something"


def test_llama_causal_lm_losses_follow_transformers_under_adamw(tmp_path):
    ref = randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    assert all(p.requires_grad for p in ours.parameters())
    ids = random_ids(LLAMA["vocab_size"], batch=2, length=10)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0                             # row 1 right-padded, as training batches are
    labels = ids.masked_fill(mask == 0, -100)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    assert_same_losses(ours, ref, dict(input_ids=ids, attention_mask=mask, labels=labels),
                       dict(input_ids=ids, attention_mask=mask, labels=labels, position_ids=positions))


def test_bert_sequence_classification_losses_follow_transformers_under_adamw(tmp_path):
    config = transformers.BertConfig(**BERT, **NO_DROPOUT_BERT, num_labels=3)
    ref = randomize(transformers.BertForSequenceClassification(config))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    ids = random_ids(BERT["vocab_size"], batch=3, length=9)
    mask = torch.ones_like(ids)
    mask[2, -4:] = 0
    batch = dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
    assert_same_losses(ours, ref, batch, batch)


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_bert_sequence_classification_loss_follows_the_problem_type(tmp_path, problem):
    labels = torch.tensor([[0.5], [-1.0]]) if problem == "regression" else torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    config = transformers.BertConfig(**BERT, num_labels=labels.shape[1])
    ref = randomize(transformers.BertForSequenceClassification(config))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    ids = random_ids(BERT["vocab_size"], batch=2, length=7)
    with torch.no_grad():
        want = ref(input_ids=ids, labels=labels).loss
    assert ref.config.problem_type == problem
    assert abs(ours(ids, labels=labels).loss.item() - want.item()) <= LOSS_TOL


def test_t5_seq2seq_losses_follow_transformers_under_adamw(tmp_path):
    ref = randomize(transformers.T5ForConditionalGeneration(transformers.T5Config(**T5, dropout_rate=0.0)))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    ids = random_ids(T5["vocab_size"], batch=2, length=8)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = random_ids(T5["vocab_size"], batch=2, length=5, seed=1)
    labels[1, -2:] = -100                        # the decoder inputs get the pad token there
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    assert_same_losses(ours, ref, batch, batch)


@pytest.mark.parametrize("head,cls,targets", [
    ("masked_lm", "BertForMaskedLM", lambda ids: dict(labels=ids.masked_fill(ids % 3 == 0, -100))),
    ("token_classification", "BertForTokenClassification",
     lambda ids: dict(labels=(ids % 2).masked_fill(ids % 5 == 0, -100))),
    ("question_answering", "BertForQuestionAnswering",
     lambda ids: dict(start_positions=torch.tensor([1, 3]), end_positions=torch.tensor([4, 30]))),
])
def test_every_bert_head_computes_the_loss_transformers_does(tmp_path, head, cls, targets):
    ref = randomize(getattr(transformers, cls)(transformers.BertConfig(**BERT)))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    assert ours.head == head
    ids = random_ids(BERT["vocab_size"], batch=2, length=9)
    with torch.no_grad():
        want = ref(input_ids=ids, **targets(ids)).loss
    got = ours(ids, **targets(ids))
    assert abs(got.loss.item() - want.item()) <= LOSS_TOL
    assert got[0] is got.loss            # positional access puts the loss first, as Transformers does


def test_dropout_differs_between_train_mode_forwards_and_not_in_eval(tmp_path):
    config = transformers.BertConfig(**BERT, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    ours = runtime.from_pretrained(save(randomize(transformers.BertModel(config)), tmp_path / "ckpt"))
    ids = random_ids(BERT["vocab_size"], batch=2, length=9)
    ours.train()
    a, b = ours(ids).last_hidden_state, ours(ids).last_hidden_state
    assert (a - b).abs().max().item() > 1e-3
    ours.eval()
    c, d = ours(ids).last_hidden_state, ours(ids).last_hidden_state
    assert torch.equal(c, d)
    assert (a - c).abs().max().item() > 1e-3


def test_train_mode_dropout_draws_the_masks_transformers_draws(tmp_path):
    """Dropout sits where the reference has it: under one seed, a train-mode forward of BERT (embedding,
    attention-probability, attention-output and feed-forward dropout) equals Transformers' exactly."""
    config = transformers.BertConfig(**BERT, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2,
                                     num_labels=2, classifier_dropout=0.25)
    ref = randomize(transformers.BertForSequenceClassification(config)).train()
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt")).train()
    ids = random_ids(BERT["vocab_size"], batch=2, length=9)
    torch.manual_seed(7)
    want = ref(input_ids=ids).logits
    torch.manual_seed(7)
    got = ours(ids).logits
    assert (got - want).abs().max().item() <= 1e-5


def test_fused_groups_under_autograd_give_the_unfused_compiles_gradients(tmp_path):
    ref = randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)))
    folder = save(ref, tmp_path / "ckpt")
    fused = runtime.load(compile_spec("specs/llama.yaml", tmp_path / "f").directory, folder, triton=True)
    plain = runtime.load(compile_spec("specs/llama.yaml", tmp_path / "u", {"fuse": False}).directory, folder)
    ids = random_ids(LLAMA["vocab_size"], batch=2, length=8)
    grads = []
    try:
        for model in (fused, plain):
            model(ids, labels=ids).loss.backward()
            grads.append(_grads_by_member(model))
    finally:
        import sys
        sys.modules[type(fused.net).__module__].kernels.force = None
    assert grads[0].keys() == grads[1].keys()
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) <= 1e-5


def _grads_by_member(model) -> dict[str, torch.Tensor]:
    """Gradients by the spec's param names (a fused projection's cut into its members)."""
    from runtime.fused_params import member_slices
    slices = member_slices(model.net)
    fused = {f for f, _, _ in slices.values()}
    out = {n: p.grad for n, p in model.net.named_parameters() if n not in fused}
    for member, (name, start, shape) in slices.items():
        out[member] = model.net.get_parameter(name).grad[start:start + shape[0]]
    return out


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    ref = randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)))
    folder = save(ref, tmp_path / "ckpt")
    ids = random_ids(LLAMA["vocab_size"], batch=2, length=8)
    grads = []
    for checkpointed in (False, True):
        model = runtime.from_pretrained(folder).train()
        if checkpointed:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) == 0.0


def test_a_forward_without_grad_records_no_graph(tmp_path):
    ref = randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    ids = random_ids(LLAMA["vocab_size"], batch=1, length=5)
    assert ours(ids).logits.requires_grad
    with torch.no_grad():
        assert not ours(ids).logits.requires_grad
    for p in ours.parameters():
        p.requires_grad_(False)
    assert ours.num_parameters(only_trainable=True) == 0
    assert not ours(ids).logits.requires_grad


def test_targets_for_a_model_without_a_loss_are_an_error(tmp_path):
    ours = runtime.from_pretrained(save(randomize(transformers.BertModel(transformers.BertConfig(**BERT))),
                                        tmp_path / "ckpt"))
    with pytest.raises(TypeError, match="no loss"):
        ours(random_ids(BERT["vocab_size"]), labels=torch.tensor([0, 1]))
    assert "loss" not in ours(random_ids(BERT["vocab_size"]), labels=None)     # None: no targets, as Transformers


# The four families below, tiny, with every dropout rate their config has set to `rate`.
def _neox(rate):
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        hidden_dropout=rate, attention_dropout=rate, pad_token_id=0))


def _bloom(rate):
    return transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=97, hidden_size=32, n_layer=2, n_head=4, hidden_dropout=rate, attention_dropout=rate,
        pad_token_id=0))


def _whisper(rate):
    return transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40, num_mel_bins=8, max_source_positions=12,
        max_target_positions=40, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        dropout=rate, attention_dropout=rate, activation_dropout=rate))


def _clip(rate):
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=1, pad_token_id=0, eos_token_id=98, attention_dropout=rate)
    vision = dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=5, image_size=16,
                  patch_size=4, attention_dropout=rate)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))


def _padded(ids):
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return mask


def _text_inputs(vocab):
    ids = random_ids(vocab, batch=2, length=9)
    return dict(input_ids=ids, attention_mask=_padded(ids))


def _features():
    return torch.randn(2, 8, 24, generator=torch.Generator().manual_seed(0))


FAMILIES = {
    # name: (reference model for a dropout rate, inputs, the output compared)
    "gpt_neox": (_neox, lambda: _text_inputs(97), "logits"),
    "bloom": (_bloom, lambda: _text_inputs(97), "logits"),
    "whisper": (_whisper, lambda: dict(input_features=_features(),
                                       decoder_input_ids=random_ids(99, batch=2, length=7, seed=1)), "logits"),
    "clip": (_clip, lambda: dict(**_text_inputs(98), pixel_values=_features().reshape(2, 3, 8, 8).repeat(1, 1, 2, 2)),
             "logits_per_text"),
}


def _max_diff(batch, got, want) -> float:
    """max |got - want| over the real tokens: a padded position's logits are no one's target."""
    if "attention_mask" in batch and got.dim() == 3:
        keep = batch["attention_mask"].bool()
        got, want = got[keep], want[keep]
    return (got - want).abs().max().item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_familys_dropout_acts_in_train_mode_only(tmp_path, family):
    build, inputs, output = FAMILIES[family]
    ref = randomize(build(0.3)).eval()
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    assert ours.spec.name == family
    batch = inputs()
    ours.train()
    a, b = ours(**batch)[output], ours(**batch)[output]
    assert (a - b).abs().max().item() > 1e-3
    ours.eval()
    c, d = ours(**batch)[output], ours(**batch)[output]
    assert torch.equal(c, d)
    with torch.no_grad():
        want = ref(**batch)[output]
    assert _max_diff(batch, c, want) <= 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_familys_train_mode_forward_draws_the_masks_transformers_draws(tmp_path, family):
    """Every dropout sits where the reference has it, in its order: under one seed a train-mode forward
    equals Transformers'."""
    build, inputs, output = FAMILIES[family]
    ref = randomize(build(0.2)).train()
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt")).train()
    batch = inputs()
    torch.manual_seed(7)
    want = ref(**batch)[output]
    torch.manual_seed(7)
    got = ours(**batch)[output]
    assert _max_diff(batch, got, want) <= 1e-5


@pytest.mark.parametrize("family", ["gpt_neox", "bloom"])
def test_causal_lm_losses_of_gpt_neox_and_bloom_follow_transformers_under_adamw(tmp_path, family):
    build, inputs, _ = FAMILIES[family]
    ref = randomize(build(0.0))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    batch = inputs()
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    assert_same_losses(ours, ref, batch, dict(batch))


def test_whisper_seq2seq_loss_from_labels_alone_equals_transformers(tmp_path):
    """One step only: Transformers freezes the encoder's position table, which a spec cannot declare
    yet, so AdamW steps would train it here and not there."""
    ref = randomize(_whisper(0.0))
    ours = runtime.from_pretrained(save(ref, tmp_path / "ckpt"))
    labels = random_ids(99, batch=2, length=6, seed=1)
    labels[1, -2:] = -100                        # the decoder inputs get the pad token there
    batch = dict(input_features=_features(), labels=labels)
    with torch.no_grad():
        want = ref(**batch).loss
    assert abs(ours(**batch).loss.item() - want.item()) <= LOSS_TOL
