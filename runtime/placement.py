"""Where a model's params live: from_pretrained's `device` and `device_map`.

One device ("cpu", "cuda", "cuda:1", "auto": the GPU when there is one) loads every param there. A
per-module map ({"embed": "cpu", "layers": "cuda:0", ...}; "" for the rest) puts each param on the
device of the longest module path that contains it, and each mapped module moves its tensor inputs to
its own device before it runs, so activations follow the params as Accelerate's hooks move them.
"""
from __future__ import annotations

import torch
from torch import nn


def _device(value) -> torch.device:
    if isinstance(value, int):
        return torch.device("cuda", value)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)


def single_device(device, device_map) -> torch.device | None:
    """The one device everything goes to, or None when a per-module map splits the model."""
    if device is not None and device_map is not None:
        raise ValueError("give device or device_map, not both")
    if device_map is None:
        return _device(device if device is not None else "cpu")
    if isinstance(device_map, dict):
        devices = {_device(v) for v in device_map.values()}
        if not devices:
            raise ValueError("device_map is empty")
        return devices.pop() if len(devices) == 1 else None
    if device_map in ("auto", "balanced", "sequential"):
        return _device("auto")
    return _device(device_map)


def _owner(path: str, keys: list[str]) -> str | None:
    """The longest map key that is `path` or one of its enclosing module paths ("" holds everything)."""
    best = None
    for key in keys:
        if key == "" or path == key or path.startswith(key + "."):
            if best is None or len(key) > len(best):
                best = key
    return best


def place(model, device_map: dict) -> None:
    net = model.net
    keys = list(device_map)
    modules = dict(net.named_modules())
    unknown = [k for k in keys if k and k not in modules]
    if unknown:
        raise ValueError(f"device_map names no module of {model.interface.name}: {', '.join(unknown)} "
                         f"(top-level modules: {', '.join(n for n in modules if n and '.' not in n)})")
    unplaced = [n for n, _ in net.named_parameters() if _owner(n, keys) is None]
    if unplaced:
        raise ValueError(f"device_map places no device for: {', '.join(unplaced[:8])}; add them or a \"\" entry")
    for key in sorted(keys, key=len):        # enclosing modules first, then the ones inside them
        modules[key].to(_device(device_map[key]))
    for key in keys:
        if key:
            modules[key].register_forward_pre_hook(_mover(_device(device_map[key])), with_kwargs=True)
    first = next(p for p in net.parameters() if p.is_floating_point())
    model._dtype, model._device = first.dtype, first.device
    model.device_map = dict(device_map)


def _mover(device: torch.device):
    def move(module: nn.Module, args, kwargs):
        return (tuple(_to(a, device) for a in args), {k: _to(v, device) for k, v in kwargs.items()})
    return move


def _to(value, device):
    if isinstance(value, torch.Tensor) and value.device != device:
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value
