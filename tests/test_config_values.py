"""config.json values that make no model are ConfigErrors before anything is built: non-finite numbers,
nesting too deep to parse, an eps or rope theta <= 0, a rope scaling dict of the wrong form, sizes
< 1, and sizes whose params cannot fit in memory (estimated from the interface's tensor shapes).
Integer tensors for float params are CheckpointErrors naming the tensor and its file."""
from __future__ import annotations

import json

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import ArtifactError, CheckpointError, ConfigError
from tests.hostile import no_hang, peak_bytes
from tests.test_load_errors import CONFIG, checkpoint, llama_tensors


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return compile_spec("specs/llama.yaml", tmp_path_factory.mktemp("art") / "llama").directory


def refused(tmp_path, artifact, text: str) -> str:
    folder = checkpoint(tmp_path)
    (folder / "config.json").write_text(text)
    with no_hang(what="loading"):
        result, peak = peak_bytes(runtime.load, artifact, folder)
    assert isinstance(result, ConfigError), f"loaded, or raised {result!r}"
    assert peak < 256 * 2**20, f"allocated {peak / 2**20:.0f} MiB before refusing"
    assert "config.json" in str(result)
    return str(result)


@pytest.mark.parametrize("change, words", [
    ({"rms_norm_eps": -1e-6}, "rms_norm eps = rms_norm_eps (rms_norm_eps=-1e-06): must be a finite number > 0"),
    ({"rms_norm_eps": 0}, "must be a finite number > 0, got 0"),
    ({"rope_theta": -10000.0}, "rope_table theta = rope_theta (rope_theta=-10000.0): must be a finite number > 0"),
    ({"rope_scaling": {"rope_type": "linear"}}, "a linear scaling dict needs 'factor'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, "'factor' must be a finite number > 0, got '2'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192}}, "'low_freq_factor' (4.0) must be below"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "a llama3 scaling dict needs 'low_freq_factor'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": -2}}, "'factor' must be a finite number > 0, got -2"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "original_max_position_embeddings": [1]}},
     "'original_max_position_embeddings' must be a finite number > 0, got [1]"),
    ({"rope_scaling": [1, 2]}, "expected dict for 'rope_scaling'"),
    ({"hidden_size": -16, "num_attention_heads": -4}, "dim 1, hidden_size (hidden_size=-16), is -16; expected a whole number >= 1"),
    ({"vocab_size": 0}, "embed.weight: dim 0, vocab_size (vocab_size=0), is 0"),
    ({"num_hidden_layers": -2}, "the count of i, num_layers (num_layers=-2), is -2"),
])
def test_values_that_make_no_model_are_refused_naming_the_value_and_the_spec_line(tmp_path, artifact, change, words):
    message = refused(tmp_path, artifact, json.dumps({**CONFIG, **change}))
    assert words in message


def test_the_spec_line_of_the_op_is_named(tmp_path, artifact):
    message = refused(tmp_path, artifact, json.dumps({**CONFIG, "rms_norm_eps": -1.0}))
    assert "llama.yaml:" in message


@pytest.mark.parametrize("text, words", [
    ('{"vocab_size": 1e999}', "1e999 is out of range"),
    ('{"vocab_size": -Infinity}', "'-Infinity' is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
])
def test_numbers_json_cannot_hold_and_deep_nesting_are_refused(tmp_path, artifact, text, words):
    assert words in refused(tmp_path, artifact, text)


def test_an_infinite_override_is_refused(tmp_path, artifact):
    with pytest.raises(ConfigError, match="'rms_norm_eps' must be a finite number, got inf"):
        runtime.load(artifact, checkpoint(tmp_path), config_overrides={"rms_norm_eps": float("inf")})


@pytest.mark.parametrize("change", [{"num_hidden_layers": 10**9}, {"hidden_size": 2**40, "num_attention_heads": 2**36},
                                    {"vocab_size": 10**15}, {"intermediate_size": 10**12}])
def test_sizes_whose_params_cannot_fit_are_refused_before_allocating(tmp_path, artifact, change):
    message = refused(tmp_path, artifact, json.dumps({**CONFIG, **change}))
    assert "parameters in" in message and "GiB available" in message


def test_init_random_refuses_what_cannot_fit_too(artifact):
    with pytest.raises(ConfigError, match="the given config: the model it describes has"):
        runtime.init_random(artifact, {**CONFIG, "num_hidden_layers": 10**9})


def test_integer_tensors_for_float_params_name_the_tensor_and_its_file(tmp_path, artifact):
    tensors = llama_tensors()
    tensors["model.norm.weight"] = torch.ones(16, dtype=torch.int64)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(32, 16, dtype=torch.bool)
    folder = checkpoint(tmp_path, tensors)
    with pytest.raises(CheckpointError) as info:
        runtime.load(artifact, folder)
    message = str(info.value)
    assert "2 of the wrong dtype" in message
    assert "model.norm.weight in model.safetensors: I64, but norm.weight is a float param" in message
    assert "model.layers.1.mlp.up_proj.weight in model.safetensors: BOOL" in message


def test_a_deeply_nested_interface_json_is_our_error(tmp_path, artifact):
    import shutil
    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    (copy / "interface.json").write_text("[" * 100_000 + "]" * 100_000)
    from runtime.interface import read_interface
    with pytest.raises(ArtifactError, match="interface.json: nested too deeply"):
        read_interface(copy)


def test_interface_json_is_read_only_if_a_regular_file(tmp_path, artifact):
    import os
    import shutil
    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    (copy / "interface.json").unlink()
    os.mkfifo(copy / "interface.json")
    from runtime.interface import read_interface
    with no_hang(what="reading a FIFO"), pytest.raises(ArtifactError, match="FIFO"):
        read_interface(copy)


def test_every_attribute_check_the_registry_names_is_one_the_runtime_runs():
    from compiler.ops import OPS
    from runtime.value_checks import CHECKS
    named = {(op.name, a.name): a.check for op in OPS.values() for a in op.attrs if a.check is not None}
    assert named and all(check in CHECKS for check in named.values()), named
