"""Property-based fuzzing of what the runtime takes from users and checkpoints after an artifact is
compiled: config.json values and the arguments of forward and generate.

The property of tests/test_fuzz_inputs.py: accepted, or refused with our own error type (ConfigError,
CheckpointError, InputError, GenerationError); never another exception, a hang or runaway memory. The
suite runs a fixed set of examples per fuzzer; GRAPHSPEC_FUZZ_EXAMPLES=N runs N random ones each.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import CheckpointError, ConfigError, GenerationError, InputError
from tests.generation_models import GPT2
from tests.hostile import fuzz, only_our_errors
from tests.test_fuzz_inputs import JSON
from tests.test_load_errors import CONFIG, checkpoint

ROOT = Path(__file__).resolve().parent.parent
SIZES = st.sampled_from([0, -1, 1, 3, 2**31, 10**9, 2**40, 10**15, 2**63, 10**30, 0.5, 1e300, True, "16"])


@pytest.fixture(scope="module")
def llama_artifact(tmp_path_factory) -> Path:
    return compile_spec(ROOT / "specs" / "llama.yaml", tmp_path_factory.mktemp("fuzz_rt") / "llama").directory


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return checkpoint(tmp_path_factory.mktemp("fuzz_ckpt"))


# -- config.json ------------------------------------------------------------------------------------
def load_with(artifact: Path, folder: Path, text: str):
    (folder / "config.json").write_text(text)
    return runtime.load(artifact, folder)


@fuzz(40)
@given(data=st.data())
@example(data=None)
def test_fuzz_config_values(llama_artifact, folder, data):
    if data is None:      # the unchanged config loads: the fuzzer's base case is a real model
        assert not isinstance(only_our_errors(load_with, llama_artifact, folder, json.dumps(CONFIG),
                                              allowed=()), Exception)
        return
    config = dict(CONFIG)
    for key in data.draw(st.lists(st.sampled_from(sorted(CONFIG) + ["rope_scaling", "rope_theta", "head_dim"]),
                                  min_size=1, max_size=3)):
        config[key] = data.draw(SIZES | JSON | st.sampled_from([float("nan"), float("inf"), -1e-6,
                                                                {"rope_type": "llama3", "factor": -1},
                                                                {"rope_type": "linear"}]))
    text = json.dumps(config, allow_nan=True)
    only_our_errors(load_with, llama_artifact, folder, text, allowed=(ConfigError, CheckpointError))


# -- forward and generate arguments ----------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    art = compile_spec(ROOT / "specs" / "gpt2.yaml", tmp_path_factory.mktemp("fuzz_rt") / "gpt2").directory
    return runtime.init_random(art, GPT2)


DTYPES = [torch.int64, torch.int32, torch.uint8, torch.int8, torch.bool, torch.float32, torch.float16]


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    count = 1
    for d in shape:
        count *= d
    values = draw(st.lists(st.integers(-3, 120), min_size=count, max_size=count))
    dtype = draw(st.sampled_from(DTYPES))
    t = torch.tensor(values, dtype=torch.int64).reshape(shape)
    return t.to(dtype)


ARGUMENT = tensors() | JSON


def call(model, generate: bool, ids, kwargs: dict):
    if generate:
        return model.generate(ids, **kwargs)
    return model(ids, **kwargs)


@fuzz(150)
@given(generate=st.booleans(), ids=ARGUMENT,
       kwargs=st.dictionaries(st.sampled_from(["attention_mask", "position_ids", "logits_to_keep", "max_new_tokens",
                                               "num_beams", "token_type_ids"]), ARGUMENT | SIZES, max_size=3))
@example(generate=True, ids=torch.tensor([[5, 6]]), kwargs={"max_new_tokens": 10**9})
@example(generate=False, ids=torch.tensor([[5, 97]]), kwargs={})
@example(generate=False, ids=torch.tensor([[5, 6]]), kwargs={"position_ids": torch.tensor([[63, 64]])})
@example(generate=False, ids=torch.zeros(2, 0, dtype=torch.long), kwargs={})
@example(generate=False, ids=torch.tensor(0), kwargs={})    # found by this test: no batch dim to read
@example(generate=False, ids=torch.tensor([0], dtype=torch.uint8), kwargs={})   # found by this test: uint8 ids
def test_fuzz_forward_and_generate_arguments(gpt2, generate, ids, kwargs):
    if generate:
        kwargs = {"max_new_tokens": 3, **kwargs}
    only_our_errors(call, gpt2, generate, ids, kwargs, allowed=(InputError, GenerationError))
