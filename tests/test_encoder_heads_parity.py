"""Every head of the encoder specs against its Transformers class, on tiny random checkpoints and a
padded batch (bert, roberta, distilbert): fp32, max abs diff over real tokens <= 1e-4."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from tests.encoder_cases import TOL, max_diff, token_batch
from tests.hf_checkpoints import randomize, save

transformers = pytest.importorskip("transformers")

BERT_LIKE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=40)
FAMILIES = {
    # family: (config class, config kwargs, class prefix, pad id, takes token types)
    "bert": ("BertConfig", dict(BERT_LIKE, type_vocab_size=2, pad_token_id=0), "Bert", 0, True),
    "roberta": ("RobertaConfig", dict(BERT_LIKE, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5),
                "Roberta", 1, False),
    "distilbert": ("DistilBertConfig", dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                            max_position_embeddings=40, pad_token_id=0), "DistilBert", 0, False),
}
HEADS = {
    "base": ("Model", ["last_hidden_state", "pooler_output"], {}),
    "masked_lm": ("ForMaskedLM", ["logits"], {}),
    "sequence_classification": ("ForSequenceClassification", ["logits"], dict(num_labels=3)),
    "token_classification": ("ForTokenClassification", ["logits"], dict(num_labels=5)),
    "question_answering": ("ForQuestionAnswering", ["start_logits", "end_logits"], {}),
}
CASES = [(f, h) for f in FAMILIES for h in HEADS]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("art")
    return {f: compile_spec(f"specs/{f}.yaml", root / f).directory for f in FAMILIES}


def make(tmp_path, family, head, seed=0, **extra):
    config_cls, kwargs, prefix, _, _ = FAMILIES[family]
    suffix, _, head_extra = HEADS[head]
    config = getattr(transformers, config_cls)(**{**kwargs, **head_extra, **extra})
    model = randomize(getattr(transformers, prefix + suffix)(config), seed)
    return model, save(model, tmp_path / (prefix + suffix))


@pytest.mark.parametrize("family,head", CASES, ids=[f"{f}-{h}" for f, h in CASES])
def test_head_matches_transformers_on_a_padded_batch(tmp_path, artifacts, family, head):
    ref, folder = make(tmp_path, family, head)
    ours = runtime.load(artifacts[family], folder)   # the head comes from config.json's architectures
    assert ours.load_report["head"] == head and ours.load_report["newly_initialized"] == []
    _, _, _, pad, typed = FAMILIES[family]
    ids, mask, types = token_batch(99, pad_id=pad)
    kwargs = {"token_type_ids": types} if typed else {}
    got = ours(ids, attention_mask=mask, **kwargs)
    fields = [f for f in HEADS[head][1] if not (family == "distilbert" and f == "pooler_output")]  # no pooler
    assert list(got) == fields
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, **kwargs)
    diffs = max_diff(got, want, fields, mask)
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_untied_lm_decoder_matches_transformers(tmp_path, artifacts, family):
    ref, folder = make(tmp_path, family, "masked_lm", tie_word_embeddings=False)
    ours = runtime.load(artifacts[family], folder)
    ids, mask, _ = token_batch(99, pad_id=FAMILIES[family][3])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask)
    assert max_diff(ours(ids, attention_mask=mask), want, ["logits"], mask)["logits"] <= TOL


def test_roberta_positions_skip_padding_so_left_padding_changes_nothing(tmp_path, artifacts):
    ref, folder = make(tmp_path, "roberta", "base")
    ours = runtime.load(artifacts["roberta"], folder)
    ids = torch.tensor([[1, 1, 1, 40, 41, 42, 43], [50, 51, 52, 53, 54, 55, 56]])
    mask = (ids != 1).long()
    got = ours(ids, attention_mask=mask).last_hidden_state
    alone = ours(ids[:1, 3:]).last_hidden_state
    assert (got[0, 3:] - alone[0]).abs().max().item() <= TOL
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got[mask.bool()] - want[mask.bool()]).abs().max().item() <= TOL
