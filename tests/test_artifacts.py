"""Artifacts are written whole or not at all, and an unchanged spec is a cache hit."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.artifact import is_complete
from compiler.pipeline import compile_spec
from compiler.schema import schema_text

ROOT = Path(__file__).resolve().parent.parent


def test_compiling_an_unchanged_spec_again_is_a_cache_hit_that_writes_nothing(tmp_path):
    first = compile_spec("specs/llama.yaml", tmp_path / "a")
    stamp = (tmp_path / "a" / "model.py").stat().st_mtime_ns
    second = compile_spec("specs/llama.yaml", tmp_path / "a")
    assert not first.cache_hit and second.cache_hit
    assert (tmp_path / "a" / "model.py").stat().st_mtime_ns == stamp
    assert second.seconds < 0.1


def test_a_changed_spec_replaces_the_artifact(tmp_path):
    spec = tmp_path / "llama.yaml"
    spec.write_text(Path("specs/llama.yaml").read_text())
    compile_spec(spec, tmp_path / "a")
    spec.write_text(spec.read_text().replace("float = 1e-6", "float = 1e-5"))
    again = compile_spec(spec, tmp_path / "a")
    assert not again.cache_hit and is_complete(tmp_path / "a", again.manifest["key"])


def test_a_crash_while_writing_leaves_the_old_artifact(tmp_path, monkeypatch):
    spec = tmp_path / "llama.yaml"
    spec.write_text(Path("specs/llama.yaml").read_text())
    old = compile_spec(spec, tmp_path / "a")
    spec.write_text(spec.read_text().replace("float = 1e-6", "float = 1e-5"))
    written = []

    def write_bytes(self, data):
        if written:
            raise OSError("disk full")
        written.append(self)
        return self.write_text(data.decode())
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(OSError, match="disk full"):
        compile_spec(spec, tmp_path / "a")
    assert is_complete(tmp_path / "a", old.manifest["key"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".a.")] in ([], [".a.lock"])


def test_two_processes_compiling_at_once_both_succeed_with_one_artifact(tmp_path):
    code = ("import sys; from compiler.pipeline import compile_spec; "
            "r = compile_spec('specs/llama.yaml', sys.argv[1]); print(r.manifest['key'])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "a")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert is_complete(tmp_path / "a", outs[0][0].strip())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.lock", "a"]


def test_the_default_cache_is_private_to_the_user(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSPEC_CACHE", str(tmp_path / "cache"))
    result = compile_spec("specs/llama.yaml")
    assert result.directory.is_relative_to(tmp_path / "cache")
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_the_manifest_records_ops_blocks_and_param_formulas(tmp_path):
    manifest = json.loads((compile_spec("specs/llama.yaml", tmp_path / "a").directory / "manifest.json").read_text())
    assert manifest["ops"]["linear"] == 8 and manifest["blocks"][-1] == "model"
    assert manifest["params"]["layers.{i}.attn.q_proj.weight"] == "head_dim*hidden_size*num_heads*num_layers"
    assert set(manifest["files"]) == {"model.py", "interface.json", "spec.json", "ir.txt", "kernels.py", "fusion.txt"}


def test_the_checked_in_schema_is_the_generated_one():
    assert (ROOT / "schemas" / "spec.schema.json").read_text() == schema_text(), \
        "regenerate it: python -m tools.cli schema > schemas/spec.schema.json"
