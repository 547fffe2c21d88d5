"""An artifact's manifest.json is validated before anything it lists is read: a malformed, edited or
hostile one is an ArtifactError naming the file and the field (or an incomplete artifact, compiled
again), never a KeyError, a read outside the directory or a hang."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.pipeline import compile_spec
from runtime.errors import ArtifactError
from runtime.manifest import MANIFEST, is_complete, read_manifest
from tests.hostile import no_hang


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return compile_spec("specs/llama.yaml", tmp_path_factory.mktemp("art") / "llama").directory


def with_manifest(artifact: Path, tmp_path: Path, edit) -> Path:
    """A copy of the artifact whose manifest.json is `edit(manifest)` (a dict, or text if a str)."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in artifact.iterdir():
        if p.is_file():
            (copy / p.name).write_bytes(p.read_bytes())
    manifest = json.loads((artifact / MANIFEST).read_text())
    edited = edit(manifest)
    (copy / MANIFEST).write_text(edited if isinstance(edited, str) else json.dumps(edited))
    return copy


@pytest.mark.parametrize("edit, words", [
    (lambda m: "{", "not valid JSON"),
    (lambda m: "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    (lambda m: "[1, 2]", "expected a JSON object"),
    (lambda m: {**m, "files": ["model.py"]}, "'files' must map file names"),
    (lambda m: {**m, "files": {"/dev/zero": "0" * 64}}, "'/dev/zero' is not a plain file name"),
    (lambda m: {**m, "files": {"../../etc/passwd": "0" * 64}}, "is not a plain file name"),
    (lambda m: {**m, "files": {"model.py": 5}}, "files.model.py: 5 is not a sha256 digest"),
    (lambda m: {**m, "versions": "1"}, "not a graphspec manifest"),
    (lambda m: {**m, "format": "1"}, "format '1'"),
    (lambda m: {**m, "ops": ["linear"]}, "does not match its manifest_sha256"),
])
def test_a_malformed_manifest_is_an_artifact_error_naming_the_file(artifact, tmp_path, edit, words):
    copy = with_manifest(artifact, tmp_path, edit)
    with no_hang(what="reading a hostile manifest"):
        with pytest.raises(ArtifactError) as info:
            read_manifest(copy)
        assert not is_complete(copy)
    assert str(copy) in str(info.value) and words in str(info.value)


def test_an_edited_manifest_is_compiled_again(artifact, tmp_path):
    copy = with_manifest(artifact, tmp_path, lambda m: {**m, "blocks": "not a list"})
    result = compile_spec("specs/llama.yaml", copy)
    assert not result.cache_hit and result.manifest["blocks"][-1] == "model" and is_complete(copy)


def test_a_listed_file_that_is_a_device_is_refused_without_reading_it(artifact, tmp_path):
    copy = with_manifest(artifact, tmp_path, lambda m: m)
    (copy / "ir.txt").unlink()
    (copy / "ir.txt").symlink_to("/dev/zero")
    with no_hang(what="hashing a device"):
        assert not is_complete(copy)
