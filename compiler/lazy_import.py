"""`torch = LazyModule("torch", globals())` in place of `import torch`, for modules the compiler imports
whose torch code only the runtime runs.

The op modules hold both the registry entries the compiler reads and the PyTorch functions the
emitted model.py calls; weight_rules.py both checks rules and transforms tensors. Importing torch is
over half of a cold `graphspec compile`, which never calls those functions. An import statement
inside each function would cost about a microsecond per call in the decode loop (rms_norm, rope,
attention); this costs nothing after the first use, which imports the module and rebinds the name in
the owning module's globals to it.
"""
from __future__ import annotations

import importlib


class LazyModule:
    def __init__(self, module: str, namespace: dict, name: str | None = None):
        self._module, self._namespace, self._name = module, namespace, name or module

    def __getattr__(self, attr: str):
        module = importlib.import_module(self._module)
        self._namespace[self._name] = module
        return getattr(module, attr)
