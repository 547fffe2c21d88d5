"""Which spec names may become Python identifiers in the emitted model.py, and the check itself.

A spec name reaches generated code as a local variable (values, block inputs), an attribute
(`self.<param>`, `cfg.<config name>`) or a class (`class <Block>`). Each must be a plain ASCII
identifier (Python folds other scripts by NFKC, so two different spec names could become one), not a
keyword, and not a name the generated code itself uses in that scope. Checked at compile time, with
a SpecError at the name's line: a bad name must never make a model.py that fails when loaded.
"""
from __future__ import annotations

import builtins
import keyword
import re

from compiler.errors import Problem

ASCII_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Module-level names of model.py: imports and what the emitter defines beside the spec's classes.
MODULE_NAMES = frozenset({"annotations", "math", "dataclass", "torch", "F", "nn", "ops", "kernels",
                          "load_kernels", "Config", "MODEL", "HEADS"})
# Names a generated method uses besides the spec's: its receiver, the config, the forward context,
# the layer index and loop variable, KV-cache slots.
METHOD_NAMES = frozenset({"self", "cfg", "ctx", "layer", "slot", "super"})

# A block's params are attributes of an nn.Module: they must not shadow nn.Module's own attributes,
# nor what the emitter sets on every module. A copy of torch 2.13's public ones, because the compiler
# must not import torch (over half of a cold compile); tests/test_names.py checks it against torch.
NN_MODULE_ATTRS = frozenset("""
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
    dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule
    half ipu load_state_dict modules mro mtia named_buffers named_children named_modules
    named_parameters parameters register_backward_hook register_buffer register_forward_hook
    register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
    register_parameter register_state_dict_post_hook register_state_dict_pre_hook requires_grad_
    set_extra_state set_submodule share_memory state_dict to to_empty train type xpu zero_grad
""".split()) | {"training", "cfg", "layer", "tie_weights"}


def identifier_problem(name: object, role: str) -> str | None:
    """Why `name` cannot be a `role` ("value", "input", "config", "param", "class"), or None."""
    if not isinstance(name, str) or not ASCII_IDENT.fullmatch(name):
        return f"{role} name {name!r} is not a plain identifier (letters, digits, _; not starting with a digit)"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"{role} name '{name}' is a Python keyword"
    if role in ("value", "input"):
        if name in MODULE_NAMES or name in METHOD_NAMES:
            return f"{role} name '{name}' is used by the generated code itself; choose another name"
        if hasattr(builtins, name):
            return f"{role} name '{name}' is a Python builtin; choose another name"
    if role == "param" and (name in NN_MODULE_ATTRS or name.startswith("_")):
        return f"param name '{name}' would shadow an attribute every torch module has"
    if role == "class" and name in MODULE_NAMES:
        return f"block name gives the class '{name}', which the generated code defines itself"
    return None


def check_names(ir) -> list[Problem]:
    """Every spec name that becomes an identifier in model.py, checked where it is written."""
    from compiler.printer import class_name
    problems = []

    def check(name, role, path, shown=None):
        why = identifier_problem(shown if shown is not None else name, role)
        if why:
            problems.append(ir.problem(path, why))

    for name, entry in ir.config.items():
        check(name, "config", entry.path)
    classes = {}
    for block in ir.blocks.values():
        for vid in block.inputs:
            check(block.values[vid].name, "input", block.loc.path + ("inputs", block.values[vid].name))
        for node in block.ops():
            for o in node.outputs:
                check(block.values[o].name, "value", node.loc.path)
        for p in block.params.values():
            check(p.name, "param", p.loc.path)
        cls = class_name(ir.name if block.role == "model" else block.name)
        if block.role != "head":
            check(block.name, "class", block.loc.path, cls)
            if cls in classes:
                problems.append(ir.problem(block.loc.path, f"blocks '{classes[cls]}' and '{block.name}' both become class '{cls}'"))
            classes[cls] = block.name
    return problems
