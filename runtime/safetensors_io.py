"""Validating, zero-copy reader of safetensors files and Hugging Face checkpoint folders.

We parse the header ourselves instead of using safetensors' loader so that every
offset is checked before any tensor is touched, and we map the file once and
hand out views of that mapping so the weights are never held twice.

Lifetime: each tensor returned by ``get`` keeps the mapping alive (it holds an
export of it). ``close()`` unmaps at once when no tensor is alive; otherwise the
unmap happens when the last tensor is freed, so a closed file never leaves a
dangling tensor behind.

Alignment: safetensors does not require data offsets to be aligned to the element
size. A view at an unaligned address works on x86 but can be slow or fault on
other CPUs, so such a tensor (only that one) is copied into fresh, aligned memory.
"""
from __future__ import annotations

import json
import mmap
import os
import pathlib
from dataclasses import dataclass

import torch

from runtime.errors import CheckpointError
from runtime.files import JSON_LIMIT, open_regular, read_regular

MAX_HEADER_BYTES = 100_000_000  # same limit as the reference implementation
MAX_ELEMENTS = 2**62

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int
    file: pathlib.Path


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs):
    # json.loads silently keeps the last duplicate; a header with two entries for
    # one name is ambiguous, so we must see the raw pairs.
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _reject_constant(token):
    raise ValueError(f"non-standard JSON constant {token}")


def _load_json(text: str, where: str):
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as e:
        raise CheckpointError(f"{where}: duplicate key {e.args[0]!r} in JSON") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{where}: not valid JSON: {e}") from None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # JSON true must not pass as 1


def _element_count(shape: list[int]) -> int | None:
    """Product of the shape, or None once it passes MAX_ELEMENTS (stops early on huge shapes)."""
    if 0 in shape:
        return 0
    n = 1
    for dim in shape:
        n *= dim
        if n > MAX_ELEMENTS:
            return None
    return n


class SafetensorsFile:
    """One .safetensors file: header fully validated at open, data mapped copy-on-write."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self._mm: mmap.mmap | None = None
        try:
            with open_regular(self.path) as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    raise CheckpointError(f"{self.path}: file is {size} bytes, too short for a safetensors header (8 bytes)")
                header_len = int.from_bytes(f.read(8), "little")
                if header_len > MAX_HEADER_BYTES:
                    raise CheckpointError(f"{self.path}: header length {header_len} exceeds the limit of {MAX_HEADER_BYTES} bytes")
                if 8 + header_len > size:
                    raise CheckpointError(f"{self.path}: header length {header_len} runs past the end of the file ({size} bytes)")
                raw = f.read(header_len)
                if len(raw) != header_len:
                    raise CheckpointError(f"{self.path}: file shrank while reading the header")
                self.metadata, self.tensors = self._parse_header(raw, 8 + header_len, size)
                # ACCESS_COPY: tensors are writable (no torch warning) and writes stay private.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open: {e.strerror or e}") from None
        except (ValueError, OverflowError) as e:  # e.g. mmap of a special file
            raise CheckpointError(f"{self.path}: cannot map: {e}") from None
        if len(self._mm) != size:  # the file changed between validation and mapping
            self.close()
            raise CheckpointError(f"{self.path}: file size changed while opening")

    def _parse_header(self, raw: bytes, data_start: int, size: int):
        where = str(self.path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{where}: header is not UTF-8 (byte {8 + e.start})") from None
        header = _load_json(text, f"{where}: header")
        if not isinstance(header, dict):
            raise CheckpointError(f"{where}: header is a JSON {type(header).__name__}, expected an object")

        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CheckpointError(f"{where}: __metadata__ must be an object mapping strings to strings")

        entries = []  # (begin, end, name, dtype, shape) with offsets relative to the data section
        for name, entry in header.items():
            if not isinstance(entry, dict):
                raise CheckpointError(f"{where}: tensor {name!r}: entry is not an object")
            for key in ("dtype", "shape", "data_offsets"):
                if key not in entry:
                    raise CheckpointError(f"{where}: tensor {name!r}: missing {key!r}")
            dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not isinstance(dtype, str):
                raise CheckpointError(f"{where}: tensor {name!r}: dtype must be a string, got {dtype!r}")
            if dtype not in DTYPES:
                raise CheckpointError(f"{where}: tensor {name!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                raise CheckpointError(f"{where}: tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
                raise CheckpointError(f"{where}: tensor {name!r}: data_offsets must be two non-negative integers, got {offsets!r}")
            begin, end = offsets
            count = _element_count(shape)
            itemsize = DTYPES[dtype].itemsize
            if count is None or count * itemsize > size:
                raise CheckpointError(f"{where}: tensor {name!r}: shape {shape} is too large "
                                      f"(limit {MAX_ELEMENTS} elements and the file size, {size} bytes)")
            if begin > end:
                raise CheckpointError(f"{where}: tensor {name!r}: data_offsets begin {begin} > end {end}")
            if end - begin != count * itemsize:
                raise CheckpointError(f"{where}: tensor {name!r}: data_offsets [{begin}, {end}] span {end - begin} bytes, "
                                      f"but shape {shape} x {dtype} needs {count * itemsize}")
            entries.append((begin, end, name, dtype, tuple(shape)))

        # The format requires the data section to be covered exactly: no gap, no
        # overlap, no trailing bytes. Anything else hides data or aliases tensors.
        entries.sort(key=lambda e: (e[0], e[1]))
        tensors: dict[str, TensorInfo] = {}
        expected = 0
        for begin, end, name, dtype, shape in entries:
            if begin > expected:
                raise CheckpointError(f"{where}: tensor {name!r} starts at data offset {begin}, leaving a hole after offset {expected}")
            if begin < expected:
                raise CheckpointError(f"{where}: tensor {name!r} starts at data offset {begin}, overlapping the previous tensor ending at {expected}")
            if data_start + end > size:
                raise CheckpointError(f"{where}: tensor {name!r} ends at byte {data_start + end}, past the end of the file "
                                      f"({size} bytes); the file is truncated")
            expected = end
            tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end, self.path)
        if data_start + expected != size:
            raise CheckpointError(f"{where}: {size - data_start - expected} trailing bytes after the last tensor "
                                  f"(data ends at byte {data_start + expected}, file is {size} bytes)")
        return metadata, tensors

    def get(self, name: str) -> torch.Tensor:
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        if self._mm is None:
            raise CheckpointError(f"{self.path}: file is closed (reading tensor {name!r})")
        dtype = DTYPES[info.dtype]
        if info.start == info.end:  # frombuffer refuses empty buffers
            return torch.empty(info.shape, dtype=dtype)
        # A memoryview slice (rather than frombuffer's offset=) keeps an export on the
        # mapping for the tensor's lifetime, which is what makes close() safe.
        view = memoryview(self._mm)[info.start:info.end]
        try:
            if info.start % dtype.itemsize:  # mmap base is page-aligned, so file offset decides
                flat = torch.frombuffer(view, dtype=torch.uint8).clone().view(dtype)
            else:
                flat = torch.frombuffer(view, dtype=dtype)
            return flat.reshape(info.shape)
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{self.path}: cannot build tensor {name!r}: {e}") from None

    def release(self, name: str, lo: int = 0, hi: int | None = None) -> None:
        """Give back the memory of a tensor's mapped pages (bytes lo..hi of it) once they have been
        copied elsewhere (cast to another dtype, transformed). The mapping is private and never
        written, so a page touched again is simply read from the file again: this never changes
        what get() returns."""
        info = self.tensors.get(name)
        if info is None or self._mm is None or not hasattr(self._mm, "madvise"):
            return
        page = mmap.PAGESIZE
        first = info.start + lo
        last = info.end if hi is None else min(info.end, info.start + hi)
        start = -(-first // page) * page             # only pages wholly inside the range
        end = last // page * page
        if end > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # tensors still view it; it is unmapped when the last one is freed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _in_hub_blobs(folder: pathlib.Path, real: str) -> bool:
    """A Hugging Face cache snapshot (`<repo>/snapshots/<rev>/`) links each file to `<repo>/blobs/`;
    that one escape is how the cache is laid out, not an attack."""
    folder = pathlib.Path(os.path.abspath(folder))
    if folder.parent.name != "snapshots":
        return False
    blobs = os.path.realpath(folder.parent.parent / "blobs")
    return os.path.isdir(blobs) and os.path.dirname(real) == blobs


def _check_shard_name(folder: pathlib.Path, real_folder: str, shard) -> pathlib.Path:
    where = f"{folder / INDEX_NAME}"
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{where}: shard name {shard!r} is not a non-empty string")
    if "\\" in shard or "\0" in shard:
        raise CheckpointError(f"{where}: shard name {shard!r} contains a backslash or NUL")
    if os.path.isabs(shard):
        raise CheckpointError(f"{where}: shard name {shard!r} is an absolute path")
    parts = shard.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise CheckpointError(f"{where}: shard name {shard!r} has an empty, '.' or '..' component")
    path = folder / shard
    real = os.path.realpath(path)
    if os.path.commonpath([real_folder, real]) != real_folder and not _in_hub_blobs(folder, real):
        raise CheckpointError(f"{where}: shard {shard!r} resolves to {real}, outside the folder {real_folder}")
    if not os.path.isfile(real):
        raise CheckpointError(f"{where}: shard {shard!r} does not exist in {folder}")
    return path


class Checkpoint:
    """A HF checkpoint folder: model.safetensors, or model.safetensors.index.json with shards."""

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)
        self.tensors: dict[str, TensorInfo] = {}
        self._files: dict[pathlib.Path, SafetensorsFile] = {}
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder}: not a directory")
        try:
            if (self.folder / INDEX_NAME).exists():
                self._open_sharded()
            elif (self.folder / SINGLE_NAME).exists():
                f = self._open(self.folder / SINGLE_NAME)
                self.tensors = dict(f.tensors)
            else:
                self._refuse_folder()
        except BaseException:
            self.close()
            raise

    def _open(self, path: pathlib.Path) -> SafetensorsFile:
        f = SafetensorsFile(path)
        self._files[path] = f
        return f

    def _open_sharded(self) -> None:
        index_path = self.folder / INDEX_NAME
        try:
            text = read_regular(index_path, JSON_LIMIT).decode("utf-8")
        except OSError as e:
            raise CheckpointError(f"{index_path}: cannot read: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{index_path}: not UTF-8 (byte offset {e.start})") from None
        index = _load_json(text, str(index_path))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
            raise CheckpointError(f"{index_path}: needs a 'weight_map' object mapping tensor names to shard file names")

        # Every shard name is checked before any shard is opened, so a hostile index
        # cannot make us map a file outside the folder even briefly.
        for name, shard in weight_map.items():
            if not isinstance(shard, str):
                raise CheckpointError(f"{index_path}: weight_map[{name!r}] is a JSON {type(shard).__name__}, "
                                      "expected a shard file name")
        real_folder = os.path.realpath(self.folder)
        shard_paths = {s: _check_shard_name(self.folder, real_folder, s) for s in sorted(set(weight_map.values()))}

        found: dict[str, str] = {}
        for shard, path in shard_paths.items():
            f = self._open(path)
            for name, info in f.tensors.items():
                if name in found:
                    raise CheckpointError(f"{self.folder}: tensor {name!r} is in two shards, {found[name]!r} and {shard!r}")
                if name not in weight_map:
                    raise CheckpointError(f"{self.folder}: tensor {name!r} is in shard {shard!r} but not in {INDEX_NAME}")
                found[name] = shard
                self.tensors[name] = info
        for name, shard in weight_map.items():
            if found.get(name) != shard:
                actual = f" (found in {found[name]!r})" if name in found else ""
                raise CheckpointError(f"{self.folder}: {INDEX_NAME} puts tensor {name!r} in shard {shard!r}, "
                                      f"but that shard does not contain it{actual}")

    def _refuse_folder(self) -> None:
        try:
            names = sorted(p.name for p in self.folder.iterdir())
        except OSError as e:
            raise CheckpointError(f"{self.folder}: cannot list: {e}") from None
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES) or n.endswith(".bin.index.json")]
        if pickles:
            raise CheckpointError(
                f"{self.folder}: only pickle checkpoints found ({', '.join(pickles[:5])}); they are not loaded "
                f"because unpickling can run arbitrary code. Convert them to safetensors "
                f"(e.g. load with transformers and save_pretrained(..., safe_serialization=True)).")
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} entries)" if len(names) > 8 else "")
        raise CheckpointError(f"{self.folder}: no {SINGLE_NAME} or {INDEX_NAME}; "
                              f"folder contains: {shown or 'nothing (empty folder)'}")

    def get(self, name: str) -> torch.Tensor:
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.folder}: no tensor named {name!r} in the checkpoint")
        f = self._files.get(info.file)
        if f is None:
            raise CheckpointError(f"{self.folder}: checkpoint is closed (reading tensor {name!r})")
        return f.get(name)

    def release(self, name: str, lo: int = 0, hi: int | None = None) -> None:
        info = self.tensors.get(name)
        f = self._files.get(info.file) if info is not None else None
        if f is not None:
            f.release(name, lo, hi)

    def close(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_checkpoint(folder) -> Checkpoint:
    return Checkpoint(folder)
