"""`graphspec run`: text in, streamed text out, with the sampling and beam options; every bad input is
one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import runtime
from tests.text_checkpoints import llama_with_tokenizer, metaspace
from tools.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return llama_with_tokenizer(tmp_path_factory.mktemp("cli") / "ckpt", metaspace(), seed=2)[1]


def run(capsys, *argv):
    capsys.readouterr()
    code = main(["run", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_prompt_streams_the_greedy_continuation(folder, capsys):
    code, out, err = run(capsys, folder, "--prompt", "The quick brown fox", "--max-new-tokens", "10")
    assert code == 0 and err == ""
    model = runtime.from_pretrained(folder)
    ids = torch.tensor([model.tokenizer.encode("The quick brown fox")])
    new = model.generate(ids, max_new_tokens=10)[0, ids.shape[1]:]
    assert out == model.tokenizer.decode(new, skip_special_tokens=True) + "\n"


def test_sampling_with_a_seed_repeats_and_another_seed_differs(folder, capsys):
    args = [folder, "--prompt", "Hello world", "--do-sample", "--temperature", "1.5", "--top-k", "40",
            "--top-p", "0.95", "--max-new-tokens", "12"]
    first = run(capsys, *args, "--seed", "3")
    assert first[0] == 0 and first[1].strip()
    assert run(capsys, *args, "--seed", "3") == first
    assert run(capsys, *args, "--seed", "4")[1] != first[1]


def test_beam_search_and_chat_print_the_reply(folder, capsys):
    model = runtime.from_pretrained(folder)
    tok = model.tokenizer
    code, out, _ = run(capsys, folder, "--prompt", "Hi there", "--chat", "--num-beams", "3", "--max-new-tokens", "6")
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "Hi there"}],
                                                add_generation_prompt=True)])
    new = model.generate(ids, num_beams=3, max_new_tokens=6)[0, ids.shape[1]:]
    assert code == 0 and out == tok.decode(new, skip_special_tokens=True) + "\n"


def one_line_error(capsys, *argv, match: str):
    capsys.readouterr()          # what came before (checkpoint writing) is not the command's
    with pytest.raises(SystemExit) as exit_info:
        code = main(["run", *map(str, argv)])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("graphspec run: error: ") and match in err, err


def test_bad_inputs_are_one_line_and_exit_two(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_error(capsys, "nobody/no-such-model", "--prompt", "x", match="could not be fetched")
    one_line_error(capsys, tmp_path / "missing", "--prompt", "x", match="no such checkpoint folder")
    one_line_error(capsys, folder, "--prompt", "x", "--do-sample", "--temperature", "0", match="temperature must be")
    one_line_error(capsys, folder, "--prompt", "x", "--temperature", "hot", match="invalid float value: 'hot'")
    one_line_error(capsys, folder, "--prompt", "x", "--num-beams", "0", match="num_beams must be")
    one_line_error(capsys, folder, "--ids", "1,x", match="--ids: 'x' is not a token id")
    one_line_error(capsys, folder, "--chat", match="--chat needs --prompt")
    one_line_error(capsys, folder, "--prompt", "x", "--dtype", "fp8", match="invalid choice: 'fp8'")
    one_line_error(capsys, match="required: checkpoint")


def test_a_folder_without_a_tokenizer_or_chat_template_says_so(tmp_path, capsys):
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    ref.save_pretrained(tmp_path / "bare")
    one_line_error(capsys, tmp_path / "bare", "--prompt", "x", match="has no tokenizer.json")
    assert run(capsys, tmp_path / "bare", "--ids", "3,4", "--max-new-tokens", "2")[0] == 0
    folder = llama_with_tokenizer(tmp_path / "plain", metaspace(), chat_template=None)[1]
    one_line_error(capsys, folder, "--prompt", "x", "--chat", match="has no chat template")


def test_an_encoder_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    bert = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                                num_attention_heads=2, intermediate_size=32))
    bert.save_pretrained(tmp_path / "bert")
    one_line_error(capsys, tmp_path / "bert", "--ids", "5,6", match="bidirectional encoder")


def test_the_installed_command_streams_in_a_fresh_process(folder):
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "run", str(folder), "--prompt", "Hello",
                           "--max-new-tokens", "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() and proc.stderr == ""
