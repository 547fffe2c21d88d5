"""Every bad command line is one error line on stderr naming the argument or file, and exit status
2: never a traceback (--debug adds it), never a hang, nothing of the user's touched."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.hostile import fuzz, no_hang
from tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A compiled llama artifact and a one-layer random checkpoint folder for it (no tokenizer.json)."""
    import runtime
    from compiler.pipeline import compile_spec
    from tools.demo import TINY_LLAMA
    tmp = tmp_path_factory.mktemp("cli")
    art = compile_spec("specs/llama.yaml", tmp / "art").directory
    folder = runtime.save_pretrained(runtime.init_random(art, {**TINY_LLAMA, "num_hidden_layers": 1}), tmp / "ckpt")
    return art, folder


def one_error(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    ([], ["required: command"]),
    (["compile"], ["required: spec", "graphspec compile --help"]),
    (["compile", "specs/llama.yaml", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["compile", "nope.yaml"], ["nope.yaml", "file not found"]),
    (["compile", "/dev/zero"], ["/dev/zero", "character device"]),
    (["compile", "specs"], ["specs", "directory"]),
    (["compile", "specs/llama.yaml", "-o", ""], ["-o/--output", "empty"]),
    (["compile", "specs/llama.yaml", "--aot", "sm_x"], ["--aot", "'sm_x'"]),
    (["compile", "specs/llama.yaml", "--aot", ""], ["--aot", "''"]),
    (["diff", "specs/llama.yaml", "nope.yaml"], ["nope.yaml", "file not found"]),
    (["show", "specs/llama.yaml", "-o", "/nonexistent/dir/x.md"], ["/nonexistent/dir/x.md", "No such file"]),
    (["run", "/nonexistent/folder"], ["/nonexistent/folder"]),
    (["run", "specs", "--max-new-tokens", "many"], ["--max-new-tokens", "invalid int value: 'many'"]),
    (["run", "specs", "--dtype", "float8"], ["--dtype", "invalid choice: 'float8'"]),
])
def test_a_bad_argument_or_file_is_one_line_and_exit_two(capsys, argv, words):
    one_error(capsys, argv, *words)


@pytest.mark.parametrize("contents, words", [
    ("a directory", ["exists and is not a directory"]),
    ("notes", ["is a directory graphspec did not write"]),
])
def test_compile_to_something_that_is_not_an_artifact_is_refused(tmp_path, capsys, contents, words):
    out = tmp_path / "out"
    if contents == "notes":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out.write_text("mine")
    one_error(capsys, ["compile", "specs/llama.yaml", "-o", str(out)], str(out), *words)
    assert (out / "notes.txt" if contents == "notes" else out).read_text() == "mine"


@pytest.mark.parametrize("ids", ["", "1,,2", "x", "-1", "1.5", "1e3", "99999999999999999999"])
def test_run_refuses_ids_that_are_not_token_ids_before_loading(capsys, ids):
    one_error(capsys, ["run", "/nonexistent/folder", "--ids", ids], "--ids")


def test_run_with_a_prompt_needs_a_readable_tokenizer(checkpoint, tmp_path, capsys):
    art, folder = checkpoint
    one_error(capsys, ["run", str(folder), "--artifact", str(art), "--prompt", "hi"], "has no tokenizer.json", "--ids")
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in folder.iterdir():
        (broken / p.name).symlink_to(p)
    (broken / "tokenizer.json").write_text(json.dumps({"model": {"type": "nonsense"}}))
    one_error(capsys, ["run", str(broken), "--artifact", str(art), "--prompt", "hi"], "tokenizer.json",
              "not a tokenizer")
    (broken / "tokenizer.json").unlink()
    os.mkfifo(broken / "tokenizer.json")
    one_error(capsys, ["run", str(broken), "--artifact", str(art), "--prompt", "hi"], "FIFO")


def test_run_with_ids_outside_the_vocabulary_or_too_many_new_tokens_is_one_line(checkpoint, capsys):
    art, folder = checkpoint
    one_error(capsys, ["run", str(folder), "--artifact", str(art), "--ids", "1,99999"], "input_ids holds 99999",
              "vocab_size")
    one_error(capsys, ["run", str(folder), "--artifact", str(art), "--ids", "1,2", "--max-new-tokens", str(10**12)],
              "max_length 1000000000002", "GiB")


def test_run_with_something_that_is_not_an_artifact(checkpoint, tmp_path, capsys):
    _, folder = checkpoint
    one_error(capsys, ["run", str(folder), "--artifact", str(tmp_path)], str(tmp_path), "not a graphspec artifact")
    one_error(capsys, ["run", str(folder), "--max-new-tokens", "-1"], "--max-new-tokens", "negative")


def test_debug_adds_the_traceback(tmp_path, capsys):
    assert main(["--debug", "compile", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].endswith("cannot read the spec: file not found")
    assert main(["compile", str(tmp_path / "nope.yaml"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["fifo", "dev_zero"])
def test_the_command_does_not_hang_on_a_fifo_or_a_device(tmp_path, make):
    spec = "/dev/zero" if make == "dev_zero" else str(tmp_path / "spec.yaml")
    if make == "fifo":
        os.mkfifo(spec)
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "compile", spec, "-o", str(tmp_path / "out")],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert spec in proc.stderr and not (tmp_path / "out").exists()


# -- fuzzing the command line -----------------------------------------------------------------------
COMMANDS = ["compile", "validate", "diff", "show", "schema", "run", "kompile", ""]
OPTIONS = ["-o", "--output", "-q", "--dump-ir", "--resolved", "--explain", "--no-fuse", "-O0", "--aot", "--format",
           "--color", "--after", "--artifact", "--prompt", "--ids", "--max-new-tokens", "--dtype", "--", "-x"]
VALUES = ["specs/llama.yaml", "specs/gpt2.yaml", "{tmp}/out", "{tmp}/out/x", "{tmp}", "{tmp}/fifo", "/dev/zero",
          "/nonexistent", "", "-", "1,2", "-1", "0", "7", "1.5", "sm_80", "sm_80,sm_x", "json", "markdown", "dot",
          "fusion", "auto", "bfloat16", "float8", "{ckpt}", "{art}", "héllo\n", "\x7f"]


@st.composite
def command_lines(draw) -> list[str]:
    argv = [draw(st.sampled_from(COMMANDS))]
    for _ in range(draw(st.integers(0, 6))):
        argv.append(draw(st.sampled_from(OPTIONS + VALUES) | st.text(max_size=6)))
    return argv


@fuzz(150)
@given(argv=command_lines())
@example(argv=["run", "{ckpt}", "--artifact", "{art}", "--ids", "1,2", "--max-new-tokens", "2"])
@example(argv=["compile", "{tmp}/fifo"])
def test_fuzz_command_lines(checkpoint, capsys, argv):
    art, folder = checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        os.mkfifo(Path(tmp) / "fifo")
        argv = [a.replace("{tmp}", tmp).replace("{ckpt}", str(folder)).replace("{art}", str(art)) for a in argv]
        with no_hang(what=f"graphspec {' '.join(argv)}"):
            status = main(argv)
    err = capsys.readouterr().err
    assert status in (0, 1, 2) and "Traceback" not in err, (argv, status, err)
    assert status != 2 or err.strip(), argv


def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path):
    """`graphspec compile --print-after lower | head -1`: no error line once head has what it wants."""
    cmd = [sys.executable, "-m", "tools.cli", "compile", "specs/llama.yaml", "-o", str(tmp_path / "a"), "-q",
           "--print-after", "lower"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)
    assert first.startswith(b"# IR after lower") and err == ""
