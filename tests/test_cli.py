"""The graphspec command line: compile prints what it built, validate exits 0 or 1."""
from __future__ import annotations

import json
from pathlib import Path

from tools.cli import main


def test_compile_prints_blocks_ops_params_and_cache_state(tmp_path, capsys):
    assert main(["compile", "specs/llama.yaml", "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "llama: compiled in" in out and "blocks: mlp, attention, decoder_layer, model" in out
    assert "linear x8" in out and "layers.{i}.mlp.up_proj.weight: hidden_size*intermediate_size*num_layers" in out
    assert main(["compile", "specs/llama.yaml", "-o", str(tmp_path / "a"), "-q"]) == 0
    assert "cache hit" in capsys.readouterr().out


def test_validate_is_zero_for_good_specs_and_one_with_a_line_per_error(tmp_path, capsys):
    assert main(["validate", *map(str, sorted(Path("specs").glob("*.yaml")))]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path("specs/llama.yaml").read_text().replace("{op: silu, x: gate, label: act}", "{op: silu, x: nope}"))
    assert main(["validate", "specs/llama.yaml", str(bad)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith(f"{bad}:") and "undefined value 'nope'" in lines[-1]


def test_compile_of_a_broken_spec_exits_two_with_the_place(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: 1\nname: x\n")
    assert main(["compile", str(bad), "-o", str(tmp_path / "out")]) == 2
    assert f"{bad}:1:1" in capsys.readouterr().err


def test_run_generates_from_a_checkpoint_folder(tmp_path, capsys):
    import runtime
    from compiler.pipeline import compile_spec
    from tools.demo import TINY_LLAMA
    art = compile_spec("specs/llama.yaml", tmp_path / "art").directory
    folder = runtime.save_pretrained(runtime.init_random(art, {**TINY_LLAMA, "num_hidden_layers": 1}), tmp_path / "ckpt")
    assert main(["run", str(folder), "--artifact", str(art), "--ids", "5,6,7", "--max-new-tokens", "4"]) == 0
    tokens = capsys.readouterr().out.split("tokens:")[1].strip()
    assert len(json.loads(tokens)) == 4


def test_the_demo_main_job_round_trips_a_checkpoint(tmp_path, capsys):
    from tools.demo import main as demo
    assert demo(["--out", str(tmp_path / "demo"), "--new-tokens", "4"]) == 0
    assert "identical: True" in capsys.readouterr().out
