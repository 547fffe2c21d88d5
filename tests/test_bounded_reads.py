"""Files named by users or checkpoints are read only if regular and small enough: a FIFO, a device, a
directory or an oversized file is refused with our error naming the path, never read or waited on."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.pipeline import compile_spec
from compiler.yaml_source import load_yaml
from runtime.config import read_config_json
from runtime.errors import CheckpointError, ConfigError
from runtime.files import open_regular, read_regular
from runtime.safetensors_io import INDEX_NAME, SafetensorsFile, open_checkpoint
from tests.hostile import no_hang


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


KINDS = {"fifo": "FIFO", "directory": "directory", "link_to_dev_zero": "character device", "dev_zero": "character device"}


def make_not_regular(kind: str, folder: Path) -> tuple[Path, str]:
    """A path named config.json in `folder` (but /dev/zero itself) that is not a regular file, and
    the word our message uses for what it is."""
    path = folder / "config.json"
    if kind == "fifo":
        fifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "link_to_dev_zero":
        path.symlink_to("/dev/zero")
    else:
        path = Path("/dev/zero")
    return path, KINDS[kind]


@pytest.fixture(params=list(KINDS))
def not_regular(request, tmp_path) -> tuple[Path, str]:
    return make_not_regular(request.param, tmp_path)


def test_read_regular_refuses_what_is_not_a_regular_file(not_regular):
    path, word = not_regular
    with no_hang(what=f"reading {path}"), pytest.raises(OSError) as info:
        read_regular(path, 1000)
    assert word in info.value.strerror and info.value.filename == str(path)


def test_read_regular_refuses_a_file_over_the_limit_before_reading_it(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(10**12)   # sparse: a terabyte that would take minutes to read
    with no_hang(what="refusing a 1 TB file"), pytest.raises(OSError, match="larger than 1000 bytes"):
        read_regular(big, 1000)
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * 1000)
    assert read_regular(exact, 1000) == b"x" * 1000


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "nope")


def test_a_spec_that_is_a_fifo_or_a_device_is_a_spec_error_naming_it(tmp_path, not_regular):
    path, word = not_regular
    with no_hang(what=f"loading {path}"), pytest.raises(SpecError) as info:
        load_yaml(path)
    [problem] = info.value.problems
    assert problem.file == str(path) and word in problem.message
    with no_hang(what=f"compiling {path}"), pytest.raises(SpecError, match=word):
        compile_spec(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["fifo", "directory", "link_to_dev_zero"])
def test_config_json_that_is_not_a_regular_file_is_a_config_error(kind, tmp_path):
    path, word = make_not_regular(kind, tmp_path)
    with no_hang(what="reading config.json"), pytest.raises(ConfigError, match=f"{path}.*{word}"):
        read_config_json(path.parent)


def test_a_safetensors_file_that_is_a_fifo_is_refused(tmp_path):
    path = fifo(tmp_path / "model.safetensors")
    with no_hang(what="opening a FIFO checkpoint"), pytest.raises(CheckpointError, match=f"{path}.*FIFO"):
        SafetensorsFile(path)
    with no_hang(what="opening a folder with a FIFO checkpoint"), pytest.raises(CheckpointError, match="FIFO"):
        open_checkpoint(tmp_path)


def test_an_index_file_that_is_a_fifo_or_oversized_is_refused(tmp_path):
    index = fifo(tmp_path / INDEX_NAME)
    with no_hang(what="reading a FIFO index"), pytest.raises(CheckpointError, match=f"{index}.*FIFO"):
        open_checkpoint(tmp_path)
    index.unlink()
    with open(index, "wb") as f:
        f.write(json.dumps({"weight_map": {}}).encode())
        f.truncate(10**12)
    with no_hang(what="reading a 1 TB index"), pytest.raises(CheckpointError, match=f"{index}.*larger than"):
        open_checkpoint(tmp_path)
