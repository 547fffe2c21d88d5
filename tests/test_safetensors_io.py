"""Tests for runtime.safetensors_io: header validation, folder rules, zero-copy reads."""
from __future__ import annotations

import json
import os
import struct
import warnings

import pytest
import torch
from safetensors.torch import save_file

from runtime.errors import CheckpointError
from runtime.safetensors_io import (
    MAX_HEADER_BYTES, Checkpoint, SafetensorsFile, TensorInfo, open_checkpoint,
)


# ---------------------------------------------------------------- helpers

def write_raw(path, header, data=b"", header_len=None):
    """Write a safetensors-like file by hand; header is a dict, str or bytes."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def expect_error(path, *fragments):
    with pytest.raises(CheckpointError) as ei:
        SafetensorsFile(path)
    msg = str(ei.value)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


# ---------------------------------------------------------------- valid files

def test_reads_tensors_written_by_safetensors_for_common_dtypes(tmp_path):
    ref = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "i64": torch.arange(7, dtype=torch.int64).reshape(7, 1),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(ref, tmp_path / "m.safetensors", metadata={"format": "pt"})
    with SafetensorsFile(tmp_path / "m.safetensors") as f:
        assert f.metadata == {"format": "pt"}
        assert set(f.tensors) == set(ref)
        assert isinstance(f.tensors["f32"], TensorInfo)
        for name, want in ref.items():
            got = f.get(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(got, want), name


def test_get_returns_view_of_mapping_not_copy(tmp_path):
    save_file({"w": torch.arange(16, dtype=torch.float32)}, tmp_path / "m.safetensors")
    with SafetensorsFile(tmp_path / "m.safetensors") as f:
        a, b = f.get("w"), f.get("w")
        assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        a[0] = 42.0
        assert b[0].item() == 42.0  # same memory
        del a, b


def test_writing_into_tensor_does_not_change_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(4, dtype=torch.float32)}, path)
    before = path.read_bytes()
    with SafetensorsFile(path) as f:
        t = f.get("w")
        t.fill_(-1.0)
        assert torch.equal(t, torch.full((4,), -1.0))
    assert path.read_bytes() == before


def test_get_emits_no_torch_warnings(tmp_path):
    save_file({"w": torch.ones(3)}, tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SafetensorsFile(tmp_path / "m.safetensors") as f:
            f.get("w")


def test_unaligned_tensor_is_copied_and_correct(tmp_path):
    # A 1-byte U8 tensor first pushes the F32 tensor to an odd offset.
    values = struct.pack("<3f", 1.5, -2.0, 3.25)
    header = {"a": entry("U8", (1,), (0, 1)), "b": entry("F32", (3,), (1, 13))}
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # data section starts 8-aligned
    write_raw(tmp_path / "u.safetensors", header_bytes, b"\x07" + values)
    with SafetensorsFile(tmp_path / "u.safetensors") as f:
        b = f.get("b")
        assert b.tolist() == [1.5, -2.0, 3.25]
        assert b.data_ptr() % 4 == 0
        assert f.get("a").tolist() == [7]


def test_tensors_survive_close(tmp_path):
    save_file({"w": torch.arange(8, dtype=torch.float32)}, tmp_path / "m.safetensors")
    f = SafetensorsFile(tmp_path / "m.safetensors")
    t = f.get("w")
    f.close()
    assert t.sum().item() == 28.0  # mapping stays alive while the tensor does
    with pytest.raises(CheckpointError, match="closed"):
        f.get("w")


def test_missing_tensor_names_tensor_and_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1)}, path)
    with SafetensorsFile(path) as f, pytest.raises(CheckpointError) as ei:
        f.get("nope")
    assert "nope" in str(ei.value) and str(path) in str(ei.value)


# ---------------------------------------------------------------- header validation

def test_rejects_file_shorter_than_8_bytes(tmp_path):
    (tmp_path / "s").write_bytes(b"\x01\x02")
    expect_error(tmp_path / "s", "2 bytes")


def test_rejects_header_length_over_limit(tmp_path):
    path = write_raw(tmp_path / "s", b"{}", header_len=MAX_HEADER_BYTES + 1)
    expect_error(path, str(MAX_HEADER_BYTES + 1), str(MAX_HEADER_BYTES))


def test_rejects_header_length_past_end_of_file(tmp_path):
    path = write_raw(tmp_path / "s", b"{}", header_len=1000)
    expect_error(path, "1000", "past the end")


def test_rejects_header_not_utf8(tmp_path):
    expect_error(write_raw(tmp_path / "s", b'{"\xff": 1}'), "UTF-8")


def test_rejects_header_not_json(tmp_path):
    expect_error(write_raw(tmp_path / "s", "{not json"), "not valid JSON")


def test_rejects_header_not_json_object(tmp_path):
    expect_error(write_raw(tmp_path / "s", "[1, 2]"), "expected an object")


@pytest.mark.parametrize("meta", [["x"], {"k": 1}, "s"])
def test_rejects_metadata_not_str_to_str(tmp_path, meta):
    expect_error(write_raw(tmp_path / "s", {"__metadata__": meta}), "__metadata__")


@pytest.mark.parametrize("missing", ["dtype", "shape", "data_offsets"])
def test_rejects_entry_missing_field(tmp_path, missing):
    e = entry()
    del e[missing]
    expect_error(write_raw(tmp_path / "s", {"w": e}, b"\0" * 8), "'w'", missing)


@pytest.mark.parametrize("bad", [
    {"dtype": 5}, {"shape": "2"}, {"shape": [-1]}, {"shape": [2.0]}, {"shape": [True, 2]},
    {"data_offsets": [0]}, {"data_offsets": [0, "8"]}, {"data_offsets": [0, 8, 9]}, {"data_offsets": [-8, 0]},
])
def test_rejects_entry_with_wrong_types(tmp_path, bad):
    e = {**entry(), **bad}
    expect_error(write_raw(tmp_path / "s", {"w": e}, b"\0" * 8), "'w'")


def test_rejects_entry_not_an_object(tmp_path):
    expect_error(write_raw(tmp_path / "s", {"w": [1, 2]}), "'w'", "not an object")


def test_rejects_unknown_dtype(tmp_path):
    expect_error(write_raw(tmp_path / "s", {"w": entry("F128")}, b"\0" * 8), "'w'", "F128")


def test_rejects_shape_product_over_2_pow_62(tmp_path):
    e = entry(shape=[2**31, 2**31, 2**31], offsets=(0, 8))
    expect_error(write_raw(tmp_path / "s", {"w": e}, b"\0" * 8), "'w'", "too large")


def test_rejects_shape_larger_than_file(tmp_path):
    e = entry(shape=[1000], offsets=(0, 4000))
    expect_error(write_raw(tmp_path / "s", {"w": e}, b"\0" * 8), "'w'", "too large")


def test_rejects_offsets_disagreeing_with_shape_and_dtype(tmp_path):
    e = entry(shape=(3,), offsets=(0, 8))
    expect_error(write_raw(tmp_path / "s", {"w": e}, b"\0" * 8), "'w'", "needs 12")


def test_rejects_begin_after_end(tmp_path):
    e = entry(shape=(0,), offsets=(8, 0))
    expect_error(write_raw(tmp_path / "s", {"w": e}, b"\0" * 8), "'w'", "begin 8 > end 0")


def test_rejects_overlapping_tensors(tmp_path):
    h = {"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}
    expect_error(write_raw(tmp_path / "s", h, b"\0" * 12), "'b'", "overlapping")


def test_rejects_hole_between_tensors(tmp_path):
    h = {"a": entry(offsets=(0, 8)), "b": entry(offsets=(12, 20))}
    expect_error(write_raw(tmp_path / "s", h, b"\0" * 20), "'b'", "hole", "12")


def test_rejects_data_not_starting_at_zero(tmp_path):
    expect_error(write_raw(tmp_path / "s", {"a": entry(offsets=(4, 12))}, b"\0" * 12), "'a'", "hole")


def test_accepts_entries_listed_out_of_order(tmp_path):
    h = {"b": entry(offsets=(8, 16)), "a": entry(offsets=(0, 8))}
    data = struct.pack("<4f", 1, 2, 3, 4)
    with SafetensorsFile(write_raw(tmp_path / "s", h, data)) as f:
        assert f.get("a").tolist() == [1, 2] and f.get("b").tolist() == [3, 4]


def test_rejects_truncated_file(tmp_path):
    h = {"a": entry(offsets=(0, 8)), "b": entry(offsets=(8, 16))}
    expect_error(write_raw(tmp_path / "s", h, b"\0" * 12), "'b'", "truncated")


def test_rejects_trailing_bytes(tmp_path):
    expect_error(write_raw(tmp_path / "s", {"a": entry()}, b"\0" * 11), "3 trailing bytes")


def test_rejects_duplicate_tensor_names(tmp_path):
    e = json.dumps(entry())
    expect_error(write_raw(tmp_path / "s", f'{{"w": {e}, "w": {e}}}', b"\0" * 8), "duplicate", "'w'")


def test_rejects_nan_constant_in_header(tmp_path):
    expect_error(write_raw(tmp_path / "s", '{"__metadata__": {"a": NaN}}'), "JSON")


def test_unreadable_path_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        SafetensorsFile(tmp_path / "does_not_exist.safetensors")
    with pytest.raises(CheckpointError):
        SafetensorsFile(tmp_path)  # a directory


# ---------------------------------------------------------------- folders

def write_sharded(folder, shards, weight_map=None):
    """shards: {filename: {name: tensor}}; index built from them unless weight_map given."""
    for fname, tensors in shards.items():
        save_file(tensors, folder / fname)
    if weight_map is None:
        weight_map = {n: fname for fname, ts in shards.items() for n in ts}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_single_file_checkpoint(tmp_path):
    w = torch.randn(4, 4)
    save_file({"w": w}, tmp_path / "model.safetensors")
    with open_checkpoint(tmp_path) as ck:
        assert isinstance(ck, Checkpoint) and ck.folder == tmp_path
        assert list(ck.tensors) == ["w"]
        assert torch.equal(ck.get("w"), w)


def test_sharded_checkpoint_reads_all_shards(tmp_path):
    a, b = torch.randn(3, 2), torch.arange(5, dtype=torch.int64)
    write_sharded(tmp_path, {"model-00001-of-00002.safetensors": {"a": a},
                             "model-00002-of-00002.safetensors": {"b": b}})
    with open_checkpoint(tmp_path) as ck:
        assert set(ck.tensors) == {"a", "b"}
        assert ck.tensors["b"].file == tmp_path / "model-00002-of-00002.safetensors"
        assert torch.equal(ck.get("a"), a) and torch.equal(ck.get("b"), b)
        with pytest.raises(CheckpointError, match="'zz'"):
            ck.get("zz")


def test_index_takes_precedence_over_model_safetensors(tmp_path):
    save_file({"old": torch.ones(1)}, tmp_path / "model.safetensors")
    write_sharded(tmp_path, {"s1.safetensors": {"new": torch.ones(1)}})
    with open_checkpoint(tmp_path) as ck:
        assert list(ck.tensors) == ["new"]


@pytest.mark.parametrize("text", ["not json", "[]", '{"weight_map": []}', '{"weight_map": {"a": 1}}'])
def test_rejects_malformed_index(tmp_path, text):
    (tmp_path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(CheckpointError, match="index.json"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("shard", ["/etc/passwd", "../x.safetensors", "sub/../../x.safetensors", "a\\b.safetensors"])
def test_rejects_unsafe_shard_names_before_opening_any_shard(tmp_path, shard, monkeypatch):
    # The good shard sorts and iterates first, so opening lazily would be caught.
    write_sharded(tmp_path, {"-ok.safetensors": {"a": torch.ones(1)}},
                  weight_map={"a": "-ok.safetensors", "b": shard})
    opened = []
    monkeypatch.setattr(SafetensorsFile, "__init__", lambda self, p: opened.append(p))
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(tmp_path)
    assert repr(shard) in str(ei.value) and opened == []


def test_rejects_symlinked_shard_escaping_folder(tmp_path):
    outside = tmp_path / "outside.safetensors"
    save_file({"a": torch.ones(1)}, outside)
    folder = tmp_path / "ck"
    folder.mkdir()
    os.symlink(outside, folder / "s.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the folder"):
        open_checkpoint(folder)


def test_accepts_symlinked_shard_inside_folder(tmp_path):
    save_file({"a": torch.ones(1)}, tmp_path / "real.safetensors")
    os.symlink(tmp_path / "real.safetensors", tmp_path / "s.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s.safetensors"}}))
    with open_checkpoint(tmp_path) as ck:
        assert ck.get("a").tolist() == [1.0]


def test_rejects_missing_shard_file(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        open_checkpoint(tmp_path)


def test_rejects_index_tensor_absent_from_its_shard(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": {"a": torch.ones(1)}},
                  weight_map={"a": "s1.safetensors", "ghost": "s1.safetensors"})
    with pytest.raises(CheckpointError, match=r"'ghost'.*'s1.safetensors'"):
        open_checkpoint(tmp_path)


def test_rejects_index_pointing_to_wrong_shard(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": {"a": torch.ones(1)}, "s2.safetensors": {"b": torch.ones(1)}},
                  weight_map={"a": "s2.safetensors", "b": "s2.safetensors"})
    with pytest.raises(CheckpointError, match=r"'a'"):
        open_checkpoint(tmp_path)


def test_rejects_shard_tensor_missing_from_index(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": {"a": torch.ones(1), "extra": torch.ones(1)}},
                  weight_map={"a": "s1.safetensors"})
    with pytest.raises(CheckpointError, match=r"'extra'.*not in"):
        open_checkpoint(tmp_path)


def test_rejects_tensor_in_two_shards(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": {"a": torch.ones(1)}, "s2.safetensors": {"a": torch.ones(1), "b": torch.ones(1)}},
                  weight_map={"a": "s1.safetensors", "b": "s2.safetensors"})
    with pytest.raises(CheckpointError, match=r"'a'.*two shards"):
        open_checkpoint(tmp_path)


def test_corrupt_shard_error_names_shard(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": {"a": torch.ones(1)}})
    (tmp_path / "s1.safetensors").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="s1.safetensors"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "w.pth", "last.ckpt"])
def test_refuses_pickle_checkpoints(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04.")
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(tmp_path)
    msg = str(ei.value)
    assert name in msg and "pickle" in msg and "safetensors" in msg and "code" in msg


def test_empty_or_unrelated_folder_lists_contents(tmp_path):
    with pytest.raises(CheckpointError, match="empty"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("")
    with pytest.raises(CheckpointError, match=r"README\.md, config\.json"):
        open_checkpoint(tmp_path)


def test_rejects_folder_that_is_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        open_checkpoint(tmp_path / "nope")


def test_shards_linked_into_the_hub_cache_blobs_folder_are_accepted(tmp_path):
    """The Hugging Face cache stores snapshots/<rev>/<shard> as links to ../../blobs/<hash>."""
    repo = tmp_path / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    save_file({"a": torch.arange(4, dtype=torch.float32)}, str(blobs / "h1"))
    save_file({"b": torch.ones(2, dtype=torch.float32)}, str(blobs / "h2"))
    (snap / "model-00001-of-00002.safetensors").symlink_to("../../blobs/h1")
    (snap / "model-00002-of-00002.safetensors").symlink_to("../../blobs/h2")
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with open_checkpoint(snap) as ckpt:
        assert ckpt.get("a").tolist() == [0, 1, 2, 3]


def test_a_link_out_of_a_snapshot_to_anywhere_but_blobs_is_refused(tmp_path):
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    save_file({"a": torch.zeros(1)}, str(tmp_path / "elsewhere.safetensors"))
    (snap / "model-00001-of-00001.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the folder"):
        open_checkpoint(snap)


def test_released_pages_read_back_the_same_values(tmp_path):
    """release() gives back the memory of a copied tensor; touching it again re-reads the file."""
    values = torch.randn(3, 4096)   # several pages, so whole pages are really dropped
    save_file({"w": values, "b": torch.ones(7)}, str(tmp_path / "m.safetensors"))
    with SafetensorsFile(tmp_path / "m.safetensors") as f:
        first = f.get("w").to(torch.bfloat16)
        f.release("w")
        f.release("b")
        assert torch.equal(f.get("w"), values) and torch.equal(f.get("b"), torch.ones(7))
        assert torch.equal(first, values.to(torch.bfloat16))
