"""Bad arguments to forward and generate are InputErrors naming the argument and what was expected,
decided from the runtime contract (each int input's tables, its dtype, its mask), before any op runs."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import GenerationError, InputError
from tests.generation_models import GPT2, LLAMA

BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40, type_vocab_size=2, pad_token_id=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("call_validation")
    made = {}
    for family, hf in (("llama", LLAMA), ("gpt2", GPT2), ("bert", BERT)):
        made[family] = runtime.init_random(compile_spec(f"specs/{family}.yaml", root / family).directory, hf)
    return made


def test_the_contract_names_the_tables_each_int_input_indexes(models):
    below = {family: {i.name: [str(b) for b in i.below] for i in m.contract.inputs if i.below}
             for family, m in models.items()}
    assert below == {"llama": {"input_ids": ["vocab_size"]},
                     "gpt2": {"input_ids": ["vocab_size"], "position_ids": ["max_positions"]},
                     "bert": {"input_ids": ["vocab_size"], "token_type_ids": ["type_vocab_size"]}}


@pytest.mark.parametrize("bad", [97, -1, 10**6])
def test_ids_outside_the_vocabulary_are_refused_naming_the_id_and_the_table(models, bad):
    ids = torch.tensor([[5, 6, bad, 7]])
    with pytest.raises(InputError, match=rf"input_ids holds {bad} at \[0, 2\].*97 \(vocab_size\) rows.*\[0, 97\)"):
        models["llama"](ids)
    models["llama"](ids.clamp(0, 96))      # the same call with ids in range runs


def test_float_or_bool_ids_are_refused(models):
    with pytest.raises(InputError, match="input input_ids takes an int tensor.*float32"):
        models["llama"](torch.tensor([[1.0, 2.0]]))
    with pytest.raises(InputError, match="input input_ids takes an int tensor.*torch.bool"):
        models["llama"](torch.tensor([[True, False]]))


def test_ids_of_any_integer_dtype_give_the_int64_results(models):
    ids = torch.tensor([[5, 6, 7]])
    want = models["llama"](ids).logits
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        assert torch.equal(models["llama"](ids.to(dtype)).logits, want)


def test_what_is_not_a_tensor_is_refused_naming_the_argument(models):
    with pytest.raises(InputError, match="input input_ids must be a tensor"):
        models["llama"]([[1, 2], [3]])
    with pytest.raises(InputError, match="attention_mask must be a tensor"):
        models["llama"](torch.tensor([[1, 2]]), attention_mask="all")


def test_an_empty_batch_or_sequence_is_refused(models):
    with pytest.raises(InputError, match=r"input_ids is empty \(\[1, 0\]\)"):
        models["llama"](torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match=r"input_ids is empty \(\[0, 3\]\)"):
        models["llama"](torch.zeros(0, 3, dtype=torch.long))


def test_a_mask_of_another_shape_or_values_than_0_and_1_is_refused(models):
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(InputError, match=r"attention_mask must be \[2, 3\].*got \[1, 3\]"):
        models["llama"](ids, attention_mask=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(InputError, match=r"attention_mask must be \[2, 3\].*got \[2, 3, 1\]"):
        models["llama"](ids, attention_mask=torch.ones(2, 3, 1, dtype=torch.long))
    with pytest.raises(InputError, match=r"attention_mask must hold only 0 .* and 1 .*got 2 at \[1, 0\]"):
        models["llama"](ids, attention_mask=torch.tensor([[1, 1, 1], [2, 1, 1]]))
    with pytest.raises(InputError, match=r"attention_mask must hold only 0 .*got 0.5"):
        models["llama"](ids, attention_mask=torch.tensor([[1.0, 1.0, 1.0], [0.5, 1.0, 1.0]]))
    # 0/1 of any integer or float dtype is a mask, and means what a bool mask means
    bools = torch.tensor([[False, True, True], [True, True, True]])
    want = models["llama"](ids, attention_mask=bools).logits
    assert torch.equal(models["llama"](ids, attention_mask=bools.float()).logits, want)


def test_position_ids_must_be_integers_inside_the_position_table(models):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(InputError, match="input position_ids takes an int tensor.*float"):
        models["llama"](ids, position_ids=torch.tensor([[0.0, 1.0, 2.0]]))
    with pytest.raises(InputError, match=r"position_ids holds 64 at \[0, 2\].*64 \(max_positions\) rows"):
        models["gpt2"](ids, position_ids=torch.tensor([[62, 63, 64]]))
    models["gpt2"](ids, position_ids=torch.tensor([[61, 62, 63]]))


def test_token_type_ids_must_be_inside_the_token_type_table(models):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(InputError, match=r"token_type_ids holds 2 at \[0, 1\].*2 \(type_vocab_size\) rows"):
        models["bert"](ids, token_type_ids=torch.tensor([[0, 2, 1]]))


def test_generate_checks_its_inputs_like_forward(models):
    with pytest.raises(InputError, match="input_ids holds 500"):
        models["llama"].generate(torch.tensor([[5, 500]]), max_new_tokens=2)
    with pytest.raises(InputError, match="attention_mask must be"):
        models["llama"].generate(torch.tensor([[5, 6]]), attention_mask=torch.ones(1, 5), max_new_tokens=2)


def test_generating_past_the_position_table_is_refused_before_anything_is_allocated(models):
    prompt = torch.arange(3, 63)[None]
    with pytest.raises(GenerationError, match=r"max_length 65 .*64 \(max_positions\) positions gpt2.s position_ids"):
        models["gpt2"].generate(prompt, max_new_tokens=5)
    assert models["gpt2"].generate(prompt, max_new_tokens=4).shape == (1, 64)


def test_an_absurd_max_new_tokens_is_refused_by_the_memory_it_would_take(models):
    with pytest.raises(GenerationError, match=r"max_length 1000000002 .*GiB"):
        models["llama"].generate(torch.tensor([[5, 6]]), max_new_tokens=10**9)
