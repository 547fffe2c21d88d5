"""A decode step recorded once and replayed: the CPU's counterpart of a CUDA graph.

A decode step of a small model spends more time in Python — module calls, argument checks, the
dispatch of ~15 ops a layer — than in arithmetic. Recording one step lists what it computed: every
aten op (through a TorchDispatchMode) and every C kernel call (runtime.native.call), with the tensors
each read and wrote. Replaying runs that list again on the same buffers: the C kernels and the aten
ops with an `out=` form, nothing else — no module, no view, no allocation, no check.

A recording is only a proof of what one step did, so two consecutive steps are recorded and compared
entry by entry: the same ops and kernels, each tensor the same buffer (a parameter, the KV cache,
the padding row), the same input or the same scratch made in the step, at the same offset, shape and
strides; every other argument equal, except the kernel arguments marked `runtime.native.Position`,
which must have moved with the sequence. Anything that varies otherwise with the position (a mask
sliced to the keys so far, a cache written by an indexed copy) makes the two differ, and the
generation then stays eager. Python code that decides on a position without any op showing it says
until where its choice holds (ForwardContext.holds_until: a sliding window not yet full needs no
mask), and the replay stops there. So does a step that reads a tensor's value into Python (its decisions
would be frozen), draws random numbers, runs off the CPU or runs a collective. The replay computes
what the eager step computes, with the same kernels on the same values — but for add, sub, mul and div of
two tensors (broadcast or not), an embedding's row gather, int64 -> fp32, zeros_like and the
concatenation of two tensors, which C loops compute with aten's bits at a fraction of aten's call
cost —: the same numbers, bit for bit.
Consecutive kernel calls (a whole stack of decoder layers where every op has its C kernel) replay as
one program (runtime/csrc/program.c): one ctypes call runs them all, where a call each cost ~5 us of
Python and argument conversion (0.7-0.9 ms of a 5 ms int4 step).
"""
from __future__ import annotations

import ctypes
import os
import struct

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from runtime import native

# GRAPHSPEC_STEP_CAPTURE=0 keeps every decode step eager (for comparisons).
ENV = "GRAPHSPEC_STEP_CAPTURE"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


# aten's allocations without values (torch carries no tag for them)
_UNINITIALISED = {torch.ops.aten.empty, torch.ops.aten.empty_like, torch.ops.aten.empty_strided,
                  torch.ops.aten.new_empty, torch.ops.aten.new_empty_strided}


_DETACH = torch.ops.aten.detach.default
_LIFT_FRESH = torch.ops.aten.lift_fresh.default
_CONSTANT_VALUES = 64            # a torch.tensor(value) of up to this many values is named by them
# arguments named by their value (exact types: a Position, an int subclass, is named otherwise)
_PLAIN = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format})


class Refused(Exception):
    """The step cannot be replayed; the message says why."""


_TRAITS: dict = {}


def _traits(func) -> tuple[bool, bool, bool]:
    """(draws random numbers, writes an argument, allocates without values) of an aten op, read once."""
    traits = _TRAITS.get(func)
    if traits is None:
        traits = _TRAITS[func] = (torch.Tag.nondeterministic_seeded in func.tags, func._schema.is_mutable,
                                  func.overloadpacket in _UNINITIALISED)
    return traits


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _tensors(value) -> list:
    """The tensors in an op's arguments or results (nested lists, tuples and dicts)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    elif not isinstance(value, (list, tuple)):
        return []
    out = []
    for v in value:          # recursing only into containers: this runs for every op of a recording
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple, dict)):
            out.extend(_tensors(v))
    return out


def _count(value) -> int:
    """How many values an op's result holds."""
    if isinstance(value, (list, tuple)):
        return sum(map(_count, value))
    return 1


class Recording:
    """What one step did, with every tensor it touched kept alive (so no buffer is reused)."""

    def __init__(self, inputs: list, past: int):
        self.inputs, self.past = inputs, past
        self.entries: list[tuple] = []          # (kind, fn, args, kwargs, out)
        self.scratch: dict[int, int] = {}       # storage made in the step -> its order
        self.constants: dict[int, tuple] = {}   # storage of a torch.tensor(value) made in the step -> its values
        self.constant_tensors: list[tuple] = []  # (that tensor, a copy of its values): restored at each replay
        self.outputs = None
        self.holds_until: int | None = None     # ForwardContext.holds_until of the recorded step
        self.refused: str | None = None

    def aten(self, func, args, kwargs, out, rng) -> None:
        """`rng`: the CPU generator's state before an op that may draw random numbers (None otherwise)."""
        if func is _LIFT_FRESH and args[0].is_cpu and args[0].numel() <= _CONSTANT_VALUES:
            # torch.tensor(value): a constant made from Python data in the step (an embedding
            # scale), in a buffer no recorded op allocated. Named by its order and its values, so a
            # replay, which reads the recorded buffer, is only taken while every step makes the same
            # constant (one made from the position would differ between two recordings).
            base = _storage(args[0])
            self.scratch.setdefault(base, len(self.scratch))
            self.constants[base] = tuple(args[0].reshape(-1).tolist())
            self.constant_tensors.append((args[0], args[0].clone()))
        seeded, mutates, alloc = _traits(func)
        single = isinstance(out, torch.Tensor)
        if alloc and single:                    # a new buffer, nothing read: ~a quarter of a step's ops
            if not out.is_cpu:
                raise Refused(f"{func} runs off the CPU")
            self.scratch.setdefault(_storage(out), len(self.scratch))
            self.entries.append(("alloc", func, args, kwargs, out))
            return
        leaves = [out] if single else _tensors(out)
        if not single and len(leaves) != _count(out):
            raise Refused(f"{func} hands a value to Python, which may decide on it")
        if seeded and (any(isinstance(v, torch.Generator) for v in (*args, *kwargs.values()))
                       or not torch.equal(rng, torch.random.get_rng_state())):
            # such an op may draw (sdpa with dropout) or not (dropout_p 0): what it did tells
            raise Refused(f"{func} draws random numbers")
        tensors = _tensors(args) + _tensors(kwargs) if kwargs else _tensors(args)
        if not all(t.is_cpu for t in tensors) or not all(t.is_cpu for t in leaves):
            raise Refused(f"{func} runs off the CPU")
        read = {_storage(t) for t in tensors}
        aliased = [_storage(t) in read for t in leaves]
        if mutates:
            kind = "mutate"
        elif all(aliased):
            kind = "view"
        elif any(aliased):
            raise Refused(f"{func} returns both views and new tensors")
        elif alloc:
            kind = "alloc"                      # no values to recompute
        else:
            kind = "compute"
        if kind in ("alloc", "compute"):
            for t in leaves:
                self.scratch.setdefault(_storage(t), len(self.scratch))
        self.entries.append((kind, func, args, kwargs, out))

    def native(self, kernel, args) -> None:
        if self.refused is None:
            self.entries.append(("native", kernel, args, {}, None))

    def signature(self) -> list:
        """The entries with each tensor named by its role, not its address: equal for two steps that
        did the same work on the same buffers."""
        inputs = {_storage(t): i for i, t in enumerate(self.inputs)}
        named: dict[tuple, tuple] = {}          # (id, full) -> name: a tensor is read many times

        def name(value, full: bool):
            kind = type(value)
            if kind in _PLAIN:                  # most arguments: sizes, pointers, flags, dtypes
                return (kind.__name__, value)
            if isinstance(value, torch.Tensor):
                key = (id(value), full)         # the recording keeps every tensor alive: ids are unique
                known = named.get(key)
                if known is None:
                    known = named[key] = tensor_name(value, full)
                return known
            if isinstance(value, native.Position):
                return ("position", int(value) - self.past)
            if isinstance(value, (list, tuple)):
                return tuple(name(v, full) for v in value)
            if isinstance(value, dict):
                return tuple((k, name(v, full)) for k, v in value.items())
            return (type(value).__name__, value)

        def tensor_name(value: torch.Tensor, full: bool):
            base = _storage(value)
            if base == 0:
                return ("empty", tuple(value.shape), value.dtype)
            # state: a buffer alive across steps (a param, the KV cache, the padding row); what
            # changes per step comes in as an input (the adapter feeds every per-step tensor)
            role = (("scratch", self.scratch[base], self.constants.get(base)) if base in self.scratch else
                    ("input", inputs[base]) if base in inputs else ("state", base))
            if full:
                return (role, tuple(value.shape), value.stride(), value.storage_offset(), value.dtype)
            return (role, value.data_ptr() - base)

        # views are left out: what they see (offset, shape, strides) is in the calls that read them
        return [(kind, fn, name(args, kind != "native"), name(kwargs, True),
                 name(out, True) if out is not None else None)
                for kind, fn, args, kwargs, out in self.entries if kind != "view"] + [
            ("outputs", name(pytree.tree_leaves(self.outputs), True)), ("holds until", self.holds_until)]


class _Dispatch(TorchDispatchMode):
    """Hands every aten op to this thread's recording (runtime.native.recorder())."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch otherwise wraps __torch_dispatch__ in a torch.compile guard whose first call imports
        # the compiler (~2.5 s); a recording never runs under torch.compile (adapter._capturable)
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _DETACH:
            # a view (no values, no buffer), which signatures and tapes leave out: torch dispatches
            # one after each allocation made under a dispatch mode
            return func(*args, **kwargs)
        recording = native.recorder()
        rng = torch.random.get_rng_state() if _traits(func)[0] else None
        out = func(*args, **kwargs)
        if recording.refused is None:
            try:
                recording.aten(func, args, kwargs, out, rng)
            except Refused as err:
                recording.refused = str(err)     # the step runs on, unrecorded
        return out


def record(net, inputs: list, ctx, past: int, copies: bool = True):
    """Run net(*inputs, ctx) eagerly while recording it: (its outputs — copies unless `copies` is
    False —, the Recording or the reason it cannot be replayed)."""
    inputs = [t.clone() if isinstance(t, torch.Tensor) else t for t in inputs]   # the tape's own buffers
    recording = Recording([t for t in inputs if isinstance(t, torch.Tensor)], past)
    outer = native.recorder()
    native.set_recorder(recording)
    try:
        with _Dispatch():
            out = net(*inputs, ctx)
    finally:
        native.set_recorder(outer)
    if recording.refused is not None:
        return out, recording.refused
    recording.outputs = out
    recording.holds_until = ctx.holds_until
    return (_copies(out) if copies else out), recording     # a replay writes the recorded outputs again


def _copies(outputs):
    return pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, outputs)


class Tape:
    """A recording turned into calls; `replay` runs them for the step at position `past`."""

    def __init__(self, recording: Recording, signature: list):
        self.recording = recording              # every tensor the calls point to stays alive
        self.signature = signature              # recording.signature(), what a later generation is matched with
        self.calls = _programs([c for c in map(_replay_call, recording.entries) if c is not None])

    def replay(self, inputs: list, past: int, copies: bool = True):
        """The step's outputs (copies, or with `copies` False the recorded buffers themselves, which the
        next replay overwrites), or None when these inputs do not fit the recorded buffers."""
        rec = self.recording
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        if rec.holds_until is not None and past + 1 > rec.holds_until:
            return None
        if len(tensors) != len(rec.inputs) or any(
                t.shape != mine.shape or t.dtype != mine.dtype for t, mine in zip(tensors, rec.inputs)):
            return None
        for mine, t in zip(rec.inputs, tensors):
            mine.copy_(t)
        for constant, values in rec.constant_tensors:
            constant.copy_(values)           # the step may have written it in place after making it
        delta = past - rec.past
        for fn in self.calls:
            fn(delta)
        return _copies(rec.outputs) if copies else rec.outputs


def _replay_call(entry):
    kind, fn, args, kwargs, out = entry
    if kind in ("view", "alloc"):
        return None            # the recorded views and buffers are the ones the other calls use
    if kind == "native":
        values = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        moving = [(i, int(a)) for i, a in enumerate(args) if isinstance(a, native.Position)]
        values = [int(v) if isinstance(v, native.Position) else v for v in values]
        return _NativeCall(fn, values, moving)
    if kind == "mutate":
        return lambda delta: fn(*args, **kwargs)
    for native_form in (_native_binary, _native_copy):
        fast = native_form(fn, args, kwargs, out)
        if fast is not None:
            return fast
    target = _out_form(fn) if isinstance(out, torch.Tensor) else None
    if target is not None:
        return lambda delta: target(*args, **kwargs, out=out)
    outs = pytree.tree_leaves(out)      # no out= form: compute, then copy

    def compute(delta):
        for mine, new in zip(outs, pytree.tree_leaves(fn(*args, **kwargs))):
            mine.copy_(new)
    return compute


# aten's elementwise ops of two same-shaped tensors whose every result is one correctly rounded
# operation (runtime/csrc/rows.c gs_binary_*: the same bits): replayed by a C loop instead of aten's
# call, which costs ~10 us on a row (a decode step has ~40 of them: residual adds, gates)
_BINARY = {torch.ops.aten.add.Tensor: 0, torch.ops.aten.sub.Tensor: 1, torch.ops.aten.mul.Tensor: 2,
           torch.ops.aten.div.Tensor: 3}


def _native_binary(fn, args, kwargs, out):
    """The C replay of a recorded add / sub / mul / div (no alpha, no rounding mode) of two tensors of
    the output's dtype: of its shape and contiguous (one loop), or broadcast to it over at most 4
    dimensions, or None."""
    code = _BINARY.get(fn)
    if (code is None or getattr(out, "dtype", None) not in native.FLOAT_KERNEL_SUFFIX or kwargs or len(args) != 2
            or not out.is_contiguous()):
        return None
    if not all(isinstance(t, torch.Tensor) and t.dtype == out.dtype for t in args):
        return None
    a, b = args
    if a.shape == b.shape == out.shape and a.is_contiguous() and b.is_contiguous():
        return _NativeCall(native.float_kernel("binary", out.dtype),
                           [a.data_ptr(), b.data_ptr(), out.data_ptr(), out.numel(), code], [])
    if out.dim() > 4 or not out.numel():
        return None
    pad = 4 - out.dim()
    sizes = [1] * pad + list(out.shape)
    # each operand's strides over the output's dims: 0 where it is broadcast
    strides = [[0] * pad + list(t.expand(out.shape).stride()) for t in (a, b)]
    return _NativeCall(native.float_kernel("binary_broadcast", out.dtype),
                       [a.data_ptr(), b.data_ptr(), out.data_ptr(), code, *sizes, *strides[0], *strides[1]], [])


def _native_copy(fn, args, kwargs, out):
    """The C replay of a recorded op that only moves or zeroes bytes (rows.c: an embedding's row
    gather, int64 -> fp32, zeros_like, the concatenation of two tensors; aten's bits), on contiguous
    tensors, or None."""
    if (not isinstance(out, torch.Tensor) or out.layout != torch.strided or out.is_quantized
            or not out.is_contiguous()):
        return None
    lib = native.library()
    if fn is torch.ops.aten.zeros_like.default:         # zero bytes are zero in every dtype
        return _NativeCall(lib.gs_zero_bytes, [out.data_ptr(), out.numel() * out.element_size()], [])
    if fn is torch.ops.aten.cat.default and isinstance(args[0], (list, tuple)) and len(args[0]) == 2:
        dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % max(out.dim(), 1)
        parts = args[0]
        if all(isinstance(t, torch.Tensor) and t.is_contiguous() and t.dtype == out.dtype and t.numel()
               and t.dim() == out.dim() for t in parts):
            rows = out.shape[:dim].numel()
            sizes = [t.numel() // rows * t.element_size() for t in parts]
            return _NativeCall(lib.gs_concat2, [parts[0].data_ptr(), sizes[0], parts[1].data_ptr(), sizes[1], rows,
                                                out.data_ptr()], [])
        return None
    source = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if source is None or not source.is_contiguous():
        return None
    if (fn in (torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default) and source.dtype == torch.int64
            and out.dtype == torch.float32 and out.shape == source.shape):
        return _NativeCall(lib.gs_i64_to_f32, [source.data_ptr(), out.data_ptr(), out.numel()], [])
    if fn is torch.ops.aten.embedding.default and len(args) >= 2 and isinstance(args[1], torch.Tensor):
        table, ids = source, args[1]
        if (table.dim() == 2 and ids.dtype == torch.int64 and ids.is_contiguous() and out.dtype == table.dtype
                and out.shape == (*ids.shape, table.shape[1])):
            row_bytes = table.shape[1] * table.element_size()
            return _NativeCall(lib.gs_gather_rows, [table.data_ptr(), table.shape[0], row_bytes, ids.data_ptr(),
                                                    ids.numel(), out.data_ptr()], [])
    return None


_OUT_FORMS: dict = {}


def _out_form(fn):
    """The overload of `fn`'s op that takes the same arguments plus one `out` tensor, if there is one
    (add.Tensor -> add.out, mul.Scalar -> mul.Scalar_out): read off the schemas once, nothing run."""
    if fn not in _OUT_FORMS:
        _OUT_FORMS[fn] = _find_out_form(fn)
    return _OUT_FORMS[fn]


def _find_out_form(fn):
    want = [(a.name, str(a.type)) for a in fn._schema.arguments]
    for name in fn.overloadpacket.overloads():
        overload = getattr(fn.overloadpacket, name)
        args = overload._schema.arguments
        if (len(args) == len(want) + 1 and [(a.name, str(a.type)) for a in args[:-1]] == want
                and args[-1].name == "out" and args[-1].alias_info is not None and args[-1].alias_info.is_write):
            return overload
    return None


class _NativeCall:
    """One recorded kernel call: its arguments' values (tensors as their pointers) and which of them
    are positions, [(index, recorded value)], advanced with the sequence."""

    def __init__(self, kernel, values: list, moving: list):
        self.kernel, self.values, self.moving = kernel, values, moving
        self.name = getattr(kernel, "__name__", "kernel")

    def __call__(self, delta):
        if self.moving:
            now = list(self.values)
            for i, recorded in self.moving:
                now[i] = recorded + delta
        else:
            now = self.values
        _check_status(self.name, self.kernel(*now))


# what a kernel's nonzero status means, where it can be told
_FAILURES = {"gs_gather_rows": "an id outside the embedding table's rows"}


def _check_status(name: str, status) -> None:
    if status:
        why = _FAILURES.get(name, f"status {status}")
        raise RuntimeError(f"{name} failed replaying a recorded decode step: {why}")


def _programs(calls: list) -> list:
    """The calls with each run of consecutive kernel calls that runtime/csrc/program.c can make
    turned into one _Program (one ctypes call for a whole run instead of one per kernel)."""
    lib = native.library() if native.available() else None
    out, run = [], []
    for c in calls:
        index = _program_index(lib, c) if isinstance(c, _NativeCall) else -1
        if index >= 0:
            run.append((index, c))
            continue
        if run:
            out.append(_Program(lib, run))
            run = []
        out.append(c)
    if run:
        out.append(_Program(lib, run))
    return out


def _program_index(lib, call: _NativeCall) -> int:
    """The kernel's index in program.c's table, or -1 (another library's function, another arity)."""
    if lib is None or getattr(lib, call.name, None) is not call.kernel:
        return -1
    if len(call.values) != len(call.kernel.argtypes or ()):
        return -1
    return lib.gs_program_kernel(call.name.encode(), len(call.values))


def _word(value, argtype) -> int:
    """An argument as program.c reads it: a float as the bits of its fp32 value, None as 0."""
    if value is None:
        return 0
    if argtype is ctypes.c_float:
        return struct.unpack("<i", struct.pack("<f", value))[0]
    return int(value)


class _Program:
    """Consecutive kernel calls run by one call of gs_program_run: the same kernels on the same
    arguments in the same order as the _NativeCalls it was made of."""

    def __init__(self, lib, run: list):
        words = []
        for index, c in run:
            words += [index, len(c.values), sum(1 << i for i, _ in c.moving)]
            words += [_word(v, t) for v, t in zip(c.values, c.kernel.argtypes)]
        self.words = (ctypes.c_int64 * len(words))(*words)
        self.status = ctypes.c_int64(0)
        self.names = [c.name for _, c in run]
        self.args = (ctypes.addressof(self.words), len(run))
        self.status_at = ctypes.addressof(self.status)
        self.run = lib.gs_program_run

    def __call__(self, delta):
        failed = self.run(*self.args, delta, self.status_at)
        if failed == -2:
            raise RuntimeError(f"a recorded decode step's program is malformed at call {self.status.value}")
        if failed != -1:
            _check_status(self.names[failed], self.status.value)


class StepCapture:
    """One generation's decode steps, recorded until two consecutive recordings match, then replayed.
    (The first steps may differ: a kernel's first call measures its candidate paths, caches fill.)
    `replayed` counts replayed steps; `refused` says why the steps stayed eager, if they did.

    `proven`: the tape of the previous generation's replayed step, when this generation runs on that
    one's buffers (Spare): a first recording whose signature equals that tape's is as good as a second
    recording, so the replay starts a step earlier, one recording fewer is made, and that tape is
    replayed again (the same calls on the same state: its own inputs, scratch and outputs) instead of
    turning the recording into another.
    `copies`: whether a step's outputs must outlive the next step; False hands out the buffers the
    recorded and replayed steps write (a caller done with each step's outputs before the next)."""

    RECORDINGS = 4             # at most this many steps recorded before giving up

    def __init__(self, proven: "Tape | None" = None, copies: bool = True):
        self.copies = copies
        self.tape: Tape | None = None
        # (the last recording, or the proven tape, and its signature)
        self.previous: tuple | None = None if proven is None else (proven, proven.signature)
        self.recorded = 0
        self.replayed = 0
        self.refused: str | None = None

    def run(self, net, inputs: list, ctx, past: int, capacity: int):
        if self.tape is not None:
            if past < capacity:
                out = self.tape.replay(inputs, past, self.copies)
                if out is not None:
                    self.replayed += 1
                    return out
            self.refuse("a step did not fit the recorded buffers")
        if self.refused is not None:
            return net(*inputs, ctx)
        out, recording = record(net, inputs, ctx, past, self.copies)
        self.recorded += 1
        if isinstance(recording, str):
            self.refuse(recording)
            return out
        signature = recording.signature()
        if self.previous is not None and self.previous[1] == signature:
            source = self.previous[0]
            self.previous, self.tape = None, source if isinstance(source, Tape) else Tape(recording, signature)
        elif self.recorded >= self.RECORDINGS:
            self.refuse(f"{self.recorded} consecutive steps did not do the same work on the same buffers")
        else:
            self.previous = (recording, signature)
        return out

    def refuse(self, reason: str) -> None:
        self.tape = self.previous = None
        self.refused = reason

    def end(self) -> "Tape | None":
        """The generation is over: its tape, if its steps were replayed to the end (for a Spare),
        and nothing kept here."""
        tape = self.tape
        self.tape = self.previous = None
        return tape


class Spare:
    """What a generation whose steps were replayed leaves to the next one of the same shape (`key`):
    its KV cache buffers and padding row, and the tape of its replayed step. A generation that runs on
    these buffers records steps naming the same state, so its first recording can be compared with
    that tape's signature (StepCapture's `proven`). Kept on the model, one at a time; taken by a
    generation, so two generations at once never share buffers (or a tape)."""

    def __init__(self, key: tuple, slots: dict, padding, tape: Tape):
        self.key, self.slots, self.padding, self.tape = key, slots, padding, tape
