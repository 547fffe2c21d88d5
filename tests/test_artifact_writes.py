"""Artifact writes: a compile replaces only graphspec's own artifacts, a process killed at any point
leaves the old or the new artifact complete, readers never see a half-swapped one, and what killed
compiles leave behind is cleaned by the next compile (never a live compile's directory)."""
from __future__ import annotations

import fcntl
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compiler.artifact import exchange
from compiler.pipeline import compile_spec
from runtime.errors import ArtifactError
from runtime.manifest import is_complete, read_manifest
from tests.hostile import FUZZ_EXAMPLES

ROOT = Path(__file__).resolve().parent.parent
LLAMA = (ROOT / "specs" / "llama.yaml").read_text()
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def specs(tmp_path) -> tuple[Path, Path]:
    """Two versions of llama.yaml that compile to different artifacts."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(LLAMA)
    assert "float = 1e-6" in LLAMA
    b.write_text(LLAMA.replace("float = 1e-6", "float = 1e-5"))
    return a, b


def leftovers(parent: Path, name: str = "out") -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") and p.name != f".{name}.lock")


def key_of(directory: Path) -> str:
    return read_manifest(directory)["key"]


# -- what is not ours is never replaced ------------------------------------------------------------
def test_a_directory_of_the_users_is_refused_and_left_as_it_is(tmp_path, specs):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "thesis.tex").write_text("years of work")
    with pytest.raises(ArtifactError, match=f"{out}: is a directory graphspec did not write"):
        compile_spec(specs[0], out)
    assert (out / "notes" / "thesis.tex").read_text() == "years of work"
    assert leftovers(tmp_path) == []


def test_a_file_is_refused_and_left_as_it_is(tmp_path, specs):
    out = tmp_path / "out"
    out.write_text("data")
    with pytest.raises(ArtifactError, match="exists and is not a directory"):
        compile_spec(specs[0], out)
    assert out.read_text() == "data" and leftovers(tmp_path) == []


def test_a_symlink_is_refused_even_to_an_artifact(tmp_path, specs):
    compile_spec(specs[0], tmp_path / "real")
    (tmp_path / "out").symlink_to(tmp_path / "real")
    with pytest.raises(ArtifactError, match="is a symbolic link"):
        compile_spec(specs[1], tmp_path / "out")
    assert (tmp_path / "out").is_symlink() and is_complete(tmp_path / "real")


def test_someone_elses_manifest_json_does_not_make_a_directory_ours(tmp_path, specs):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"name": "my web app", "icons": []}))
    with pytest.raises(ArtifactError, match="is a directory graphspec did not write"):
        compile_spec(specs[0], out)
    assert json.loads((out / "manifest.json").read_text())["name"] == "my web app"


def test_an_artifact_with_a_file_added_by_the_user_is_refused(tmp_path, specs):
    out = compile_spec(specs[0], tmp_path / "out").directory
    (out / "my_notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"holds files graphspec did not write \(my_notes.txt\)"):
        compile_spec(specs[1], out)
    assert (out / "my_notes.txt").read_text() == "keep me"


def test_an_empty_directory_and_an_artifact_with_bytecode_are_replaced(tmp_path, specs):
    out = tmp_path / "out"
    out.mkdir()
    first = compile_spec(specs[0], out)
    assert is_complete(out, first.manifest["key"])
    (out / "__pycache__").mkdir()
    (out / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"\0")   # what importing model.py leaves
    second = compile_spec(specs[1], out)
    assert is_complete(out, second.manifest["key"]) and not (out / "__pycache__").exists()


# -- stale leftovers --------------------------------------------------------------------------------
def test_the_next_compile_cleans_dead_compiles_leftovers_but_not_a_live_ones(tmp_path, specs):
    out = compile_spec(specs[0], tmp_path / "out").directory
    dead, live = tmp_path / ".out.tmp-dead0000", tmp_path / ".out.tmp-live0000"
    for d in (dead, live):
        d.mkdir()
        (d / "model.py").write_text("partial")
    lookalike = tmp_path / ".out.tmp-not-ours"          # not a name a compile makes
    lookalike.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)                  # what a compile in progress holds
        assert compile_spec(specs[0], out).cache_hit    # a cache hit cleans too
        assert leftovers(tmp_path) == [".out.tmp-live0000", ".out.tmp-not-ours"]
    finally:
        os.close(fd)
    compile_spec(specs[1], out)
    assert leftovers(tmp_path) == [".out.tmp-not-ours"]


def test_an_old_artifact_stranded_by_a_kill_in_the_fallback_swap_is_put_back(tmp_path, specs):
    first = compile_spec(specs[0], tmp_path / "out")
    os.rename(tmp_path / "out", tmp_path / ".out.old-abcd1234")   # where two renames leave it
    compile_spec(specs[0], tmp_path / "out")
    assert is_complete(tmp_path / "out", first.manifest["key"]) and leftovers(tmp_path) == []


# -- kills -----------------------------------------------------------------------------------------
CHILD = r"""
import os, signal, sys
from pathlib import Path
import compiler.artifact as artifact
from compiler.pipeline import compile_spec

specs, out, point = sys.argv[1:3], sys.argv[3], sys.argv[4]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_exchange, real_rename, real_write = artifact.exchange, os.rename, Path.write_bytes
renames = []

def exchange(a, b):
    if point == "before_swap":
        die()
    if point == "no_exchange":
        return False
    done = real_exchange(a, b)
    if point == "after_swap":
        die()
    return done

def rename(a, b):
    renames.append(b)
    if point == "no_exchange" and len(renames) == 2:
        die()            # between taking the old artifact away and putting the new one in place
    return real_rename(a, b)

def write_bytes(self, data):
    if point == "writing" and self.name == "ir.txt":
        die()
    return real_write(self, data)

artifact.exchange, os.rename, Path.write_bytes = exchange, rename, write_bytes
i = 0
while True:              # alternate the two specs, so every compile replaces the artifact
    compile_spec(specs[i % 2], out)
    print("compiled", flush=True)
    i += 1
"""


def run_child(specs, out: Path, point: str, kill_after: float | None = None) -> None:
    """Run CHILD until it dies at `point` (or is killed `kill_after` s after its first compile)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(specs[1]), str(specs[0]), str(out), point],
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        assert child.stdout.readline() == "compiled\n", child.stderr.read()
        time.sleep(kill_after)
        child.kill()
    _, err = child.communicate(timeout=300)
    assert child.returncode == -9, err


@pytest.mark.parametrize("point", ["writing", "before_swap", "after_swap", "no_exchange"])
def test_a_compile_killed_at_each_step_leaves_a_complete_artifact(tmp_path, specs, point):
    out = tmp_path / "out"
    keys = {compile_spec(s, tmp_path / f"ref{i}").manifest["key"] for i, s in enumerate(specs)}
    compile_spec(specs[0], out)
    run_child(specs, out, point)
    if point == "no_exchange":      # the fallback's one window: the next compile puts the old one back
        assert not out.exists() and len(leftovers(tmp_path)) == 2
        compile_spec(specs[0], out)
    assert is_complete(out) and key_of(out) in keys
    compile_spec(specs[1], out)
    assert leftovers(tmp_path) == []


def test_compiles_killed_at_random_moments_always_leave_a_complete_artifact(tmp_path, specs):
    out = tmp_path / "out"
    keys = {compile_spec(s, tmp_path / f"ref{i}").manifest["key"] for i, s in enumerate(specs)}
    compile_spec(specs[0], out)
    rng = random.Random(15)
    for _ in range(FUZZ_EXAMPLES or 4):
        run_child(specs, out, "random", kill_after=rng.uniform(0, 0.5))
        assert is_complete(out) and key_of(out) in keys
    compile_spec(specs[1], out)
    assert leftovers(tmp_path) == []


# -- concurrency -----------------------------------------------------------------------------------
READER = r"""
import sys
from runtime.manifest import is_complete
out, stop = sys.argv[1], sys.argv[2]
import os
checks = failures = 0
while not os.path.exists(stop):
    checks += 1
    failures += not is_complete(out)
print(checks, failures)
"""

COMPILER = r"""
import sys
from compiler.pipeline import compile_spec
for _ in range(int(sys.argv[3])):
    for spec in sys.argv[1:3]:
        compile_spec(spec, sys.argv[4])
"""


def test_concurrent_compiles_all_succeed_and_a_reader_only_ever_sees_complete_artifacts(tmp_path, specs):
    out, stop = tmp_path / "out", tmp_path / "stop"
    compile_spec(specs[0], out)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out), str(stop)], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, "-c", COMPILER, str(specs[i % 2]), str(specs[1 - i % 2]), "2", str(out)],
                                cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(3)]
    results = [w.communicate(timeout=300) for w in writers]
    stop.touch()
    checks, failures = map(int, reader.communicate(timeout=300)[0].split())
    assert all(w.returncode == 0 for w in writers), results
    assert checks > 0 and failures == 0
    assert is_complete(out) and leftovers(tmp_path) == []


def test_exchange_swaps_two_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "x").write_text("b")
    assert exchange(tmp_path / "a", tmp_path / "b"), "this machine's filesystem supports RENAME_EXCHANGE"
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"
