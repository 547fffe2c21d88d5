"""The token embeddings of a loaded model: `inputs_embeds`, get/set, and resizing the vocabulary.

The interface says which embedding module reads which int input (`embeddings`, derived by the
compiler from the graph) and which config entry sizes it (the tensors' shapes), so nothing here
knows a family: resizing changes every tensor with a dim of that config name.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from runtime.expr import Expr


def take_embeds(model, args: tuple, kwargs: dict) -> dict:
    """Pop `inputs_embeds`-like keywords from a call; each stands in for its int input, which gets a
    placeholder of ids (only its shape is read) that the embedding module recognises by identity."""
    out = {}
    callers = model.contract.callers
    positional = callers[0].name if args and callers else None
    for kwarg, (name, module) in (model.interface.embeddings or {}).items():
        value = kwargs.pop(kwarg, None)
        if value is None:
            continue
        if kwargs.get(name) is not None or name == positional:
            raise TypeError(f"{model.interface.name}: give {name} or {kwarg}, not both")
        value = torch.as_tensor(value, device=model.device).to(model.dtype)
        if value.dim() == 2:
            value = value[None]
        placeholder = torch.zeros(value.shape[:2], dtype=torch.long, device=model.device)
        kwargs[name] = placeholder
        out[module] = (placeholder, value)
    return out


@contextmanager
def embeds_in_place(net: nn.Module, embeds: dict | None):
    """While the network runs, each embedding module given embeds returns them for its placeholder ids."""
    handles = []
    for path, (placeholder, value) in (embeds or {}).items():
        def hook(module, args, output, _ids=placeholder, _value=value):
            return _value if args and args[0] is _ids else output
        handles.append(net.get_submodule(path).register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def input_embeddings_path(model) -> str:
    found = model.interface.input_embeddings()
    if found is None:
        raise TypeError(f"{model.interface.name} has no input read through an embedding table")
    return found[1]


def set_module(net: nn.Module, path: str, module: nn.Module) -> None:
    owner, _, leaf = path.rpartition(".")
    setattr(net.get_submodule(owner) if owner else net, leaf, module)


def retie(net: nn.Module) -> None:
    for m in net.modules():
        if hasattr(m, "tie_weights"):
            m.tie_weights()


def _vocab_name(model, path: str) -> str:
    """The config entry that sizes the embedding's rows (its shape's first dim, a plain config name)."""
    record = next((t for t in model.interface.tensors if t.name == f"{path}.weight"), None)
    dim = record.shape[0] if record is not None and record.shape else None
    if not isinstance(dim, Expr) or dim.kind != "name":
        raise TypeError(f"{model.interface.name}: the rows of {path} are not one config value; cannot resize")
    return dim.value


def _expanded(record, config: dict) -> list[str]:
    names = [record.name]
    for var, count in record.repeat:
        n = int(count.evaluate(config))
        names = [name.replace(f"{{{var}}}", str(i)) for name in names for i in range(n)]
    return names


def _grown(old: torch.Tensor, dim: int, new: int, fill) -> torch.Tensor:
    """old cut or extended along dim to `new`; the added slices from fill(old with dim first, count)."""
    t = old.movedim(dim, 0)
    keep = min(t.shape[0], new)
    parts = [t[:keep]]
    if new > keep:
        parts.append(fill(t, new - keep).to(t.dtype))
    return torch.cat(parts).movedim(0, dim).contiguous()


def _mean_rows(old: torch.Tensor, count: int) -> torch.Tensor:
    """Transformers' mean_resizing: new rows drawn around the old rows' mean with their covariance
    scaled by 1e-9 (the mean itself when that covariance is not positive definite)."""
    rows = old.float().reshape(old.shape[0], -1) if old.dim() > 1 else old.float()[:, None]
    mean = rows.mean(0)
    centered = rows - mean
    cov = centered.T @ centered / rows.shape[0]
    if bool(torch.distributions.constraints.positive_definite.check(1e-9 * cov).all()):
        sample = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-9 * cov).sample((count,))
    else:
        sample = mean[None].repeat(count, 1)
    return sample.reshape(count, *old.shape[1:])


def resize_token_embeddings(model, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                            mean_resizing: bool = True) -> nn.Module:
    """Every tensor sized by the embedding's row count (the table, an untied LM head, its bias) cut or
    grown to the new count; the config follows. New rows: the old rows' mean (mean_resizing, as
    Transformers) or the spec's initialiser."""
    path = input_embeddings_path(model)
    vocab = _vocab_name(model, path)
    old_n = int(model.config[vocab])
    new_n = old_n if new_num_tokens is None else int(new_num_tokens)
    if pad_to_multiple_of:
        new_n = -(-new_n // pad_to_multiple_of) * pad_to_multiple_of
    if new_n == old_n:
        return model.get_input_embeddings()
    from runtime.init import initial_value
    tied = {alias for alias in _aliases(model.net)}
    with torch.no_grad():
        for record in model.interface.tensors:
            dims = [k for k, d in enumerate(record.shape) if isinstance(d, Expr) and d.kind == "name" and d.value == vocab]
            if not dims:
                continue
            for name in _expanded(record, model.config):
                if name in tied or not _exists(model.net, name):
                    continue
                owner_path, _, leaf = name.rpartition(".")
                owner = model.net.get_submodule(owner_path)
                old = getattr(owner, leaf)
                if leaf == "bias":
                    def fill(t, n):
                        return t.float().mean().expand(n).clone() if mean_resizing else t.new_zeros(n)
                elif mean_resizing:
                    fill = _mean_rows
                else:
                    def fill(t, n, _name=name):
                        return initial_value(model, _name, (n, *t.shape[1:]), t.dtype, t.device)
                value = _grown(old.detach(), dims[0], new_n, fill)
                setattr(owner, leaf, nn.Parameter(value, requires_grad=old.requires_grad))
                for attr in ("num_embeddings", "out_features"):
                    if hasattr(owner, attr) and leaf == "weight":
                        setattr(owner, attr, new_n)
    model.config.set(vocab, new_n)
    cfg = getattr(model.net, "cfg", None)
    if cfg is not None and hasattr(cfg, vocab):
        setattr(cfg, vocab, new_n)
    retie(model.net)
    model.config_changed()
    return model.get_input_embeddings()


def _aliases(net: nn.Module) -> list[str]:
    from runtime.weights import tied_params
    return list(tied_params(net))


def _exists(net: nn.Module, name: str) -> bool:
    try:
        net.get_parameter(name)
    except AttributeError:
        return False
    return True
