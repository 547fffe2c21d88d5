"""The kernels of an artifact at run time: which path a fused group takes, and loading kernels.py.

CUDA tensors take the Triton kernels (outside autograd and training, see `enabled`). CPU tensors take
the group's PyTorch code, unless the Triton
path is forced (`runtime.load(..., triton=True)` or GRAPHSPEC_TRITON=1): then, without a GPU, the
kernels run under Triton's interpreter (TRITON_INTERPRET=1), which is how they are tested on CPU.
Nothing falls back silently: `paths()` is what `CompiledModel.kernel_report()` shows.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from runtime.artifact import import_file


def env_forced() -> bool:
    return os.environ.get("GRAPHSPEC_TRITON", "") not in ("", "0")


class Kernels:
    def __init__(self, path: Path):
        self.path = Path(path)
        # The load option (runtime.load resolves GRAPHSPEC_TRITON into it once: reading os.environ
        # in every fused group of every decode step cost 0.4 ms a token). None: the variable decides.
        self.force: bool | None = None
        self._modules: dict[bool, object] = {}

    def forced(self) -> bool:
        return env_forced() if self.force is None else self.force

    def enabled(self, x: torch.Tensor, ctx=None) -> bool:
        """The Triton path for a group whose first input is x. Under autograd (grad mode on), while the
        model trains (dropout) and while attention probabilities are recorded, the group runs its
        PyTorch code: the kernels have no backward, no dropout and keep no probabilities."""
        if torch.is_grad_enabled() or (ctx is not None and (ctx.training or ctx.record_attentions)):
            return False
        return x.is_cuda or self.forced()

    def interpreted(self) -> bool:
        return not torch.cuda.is_available()

    def module(self):
        interpret = self.interpreted()
        if interpret not in self._modules:
            self._modules[interpret] = import_kernels(self.path, interpret)
        return self._modules[interpret]

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.module(), name)

    def path_for(self, device: torch.device) -> str:
        if device.type == "cuda":
            return "triton"
        if self.forced():
            return "triton (interpreter)" if self.interpreted() else "triton"
        return "torch"


def import_kernels(path: Path, interpret: bool):
    """Import kernels.py. Triton fixes interpreter mode when it is first imported (its own library
    functions are decorated then), so the interpreter needs TRITON_INTERPRET=1 before that import."""
    name = f"graphspec_kernels_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}_{path.stat().st_mtime_ns}"
    if name in sys.modules:
        return sys.modules[name]
    if interpret:
        if "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"
        import triton
        if not triton.knobs.runtime.interpret:
            raise RuntimeError("the Triton path on CPU needs Triton's interpreter, but triton was imported "
                               "without it: set TRITON_INTERPRET=1 (or GRAPHSPEC_TRITON=1) before the process "
                               "imports triton")
    return import_file(name, path)


def load_kernels(model_file: str) -> Kernels:
    return Kernels(Path(model_file).with_name("kernels.py"))


def kernel_report(model) -> dict[str, str]:
    """Fused group (block.name) -> the path it takes on the model's device."""
    module = sys.modules.get(type(model.net).__module__)
    kernels = getattr(module, "kernels", None)
    with_kernel = {g for k in model.manifest.get("kernels", {}).values() for g in k.get("groups", [])}
    out = {}
    for block, groups in model.manifest.get("fusion", {}).get("groups", {}).items():
        for g in groups:
            key = f"{block}.{g['name']}"
            if g["template"] == "projection":
                out[key] = "torch (one matmul over the concatenated weights)"
            elif key in with_kernel and kernels is not None:
                out[key] = kernels.path_for(model.device)
            else:
                out[key] = "torch (no kernel for this group)"
    return out
