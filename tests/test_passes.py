"""Each pass as a rewrite of the IR: the IR before and after it, compared structurally (ops, and the
values they read and write by name), and the pipeline's slices and dumps."""
from __future__ import annotations

from pathlib import Path

import pytest

from compiler.passes import NAMES, enabled, run_pipeline
from compiler.pipeline import compile_spec
from compiler.printer import const_value
from compiler.spec import load_spec
from tools.cli import main as cli

LLAMA = "specs/llama.yaml"


def summary(block) -> list[tuple]:
    """(op, operand names, output names) per node; a region as its members."""
    def name(v):
        return block.values[v].name
    out = []
    for node in block.order():
        for n in (node.region.nodes if node.region else [node]):
            out.append((n.op if not n.block else f"{n.op} {n.block}", [name(v) for v in n.inputs.values()],
                        [name(o) for o in n.outputs]))
    return out


def ir_after(path, stage, options=None):
    return run_pipeline(load_spec(path), options, until=stage)


def test_fold_constants_turns_constant_expressions_into_values(tmp_path):
    text = Path(LLAMA).read_text().replace("{op: rms_norm, x: x, w: norm, eps: rms_norm_eps, label: norm}",
                                           "{op: rms_norm, x: x, w: norm, eps: rms_norm_eps, offset: 1 - 1}")
    path = tmp_path / "llama.yaml"
    path.write_text(text)
    node = next(n for n in ir_after(path, "check_weight_rules").model.order() if n.op == "rms_norm")
    assert not node.attrs["offset"].is_constant() or node.attrs["offset"].kind != "const"
    node = next(n for n in ir_after(path, "fold_constants").model.order() if n.op == "rms_norm")
    assert node.attrs["offset"].kind == "const" and const_value(node.attrs["offset"]) == 0


def test_an_offset_written_as_an_expression_takes_the_path_its_value_says(tmp_path):
    """`offset: 1 - 1` is 0: the same code as no offset, in the PyTorch path and in the Triton kernel."""
    text = Path(LLAMA).read_text()
    variants = {"plain": text, "zero": text.replace("{op: rms_norm, x: x, w: norm, eps: rms_norm_eps, label: norm}",
                                                    "{op: rms_norm, x: x, w: norm, eps: rms_norm_eps, label: norm, offset: 1 - 1}")}
    files = {}
    for name, body in variants.items():
        (tmp_path / name).mkdir()
        path = tmp_path / name / "llama.yaml"
        path.write_text(body)
        out = compile_spec(path, tmp_path / name / "out").directory
        files[name] = [(out / f).read_text().split("\n", 1)[1] for f in ("model.py", "kernels.py")]
    assert files["plain"] == files["zero"]


def test_defer_carried_ops_moves_the_residual_add_into_the_next_layer():
    before, after = ir_after(LLAMA, "derive_contract"), ir_after(LLAMA, "defer_carried_ops")
    assert summary(before.blocks["decoder_layer"]) == [
        ("rms_norm", ["x"], ["h"]), ("call attn", ["h", "cos", "sin"], ["h"]), ("add", ["x", "h"], ["x"]),
        ("rms_norm", ["x"], ["h"]), ("call mlp", ["h"], ["h"]), ("add", ["x", "h"], ["x"])]
    layer = after.blocks["decoder_layer"]
    assert summary(layer) == [
        ("add", ["x", "h"], ["x"]), ("rms_norm", ["x"], ["h"]), ("call attn", ["h", "cos", "sin"], ["h"]),
        ("add", ["x", "h"], ["x"]), ("rms_norm", ["x"], ["h"]), ("call mlp", ["h"], ["h"])]
    assert [layer.values[v].name for v in layer.inputs] == ["x", "h", "cos", "sin"]
    assert [layer.values[v].name for v in layer.outputs] == ["x", "h"]
    assert [op for op, _, _ in summary(after.model)] == [
        "embedding", "rope_table", "full_like", "repeat layers", "add", "rms_norm", "linear"]
    start = next(n for n in after.model.order() if n.op == "full_like")
    assert const_value(start.attrs["value"]) == 0        # the first layer adds nothing


def test_defer_carried_ops_leaves_a_layer_that_ends_in_a_norm_alone():
    before, after = ir_after("specs/bert.yaml", "derive_contract"), ir_after("specs/bert.yaml", "defer_carried_ops")
    assert summary(before.blocks["encoder_layer"]) == summary(after.blocks["encoder_layer"])
    assert summary(before.model) == summary(after.model)


def test_without_fusion_nothing_is_deferred():
    ir = ir_after(LLAMA, None, {"fuse": False})
    assert [op for op, _, _ in summary(ir.model)] == ["embedding", "rope_table", "repeat layers", "keep_positions",
                                                       "rms_norm", "linear"]


def test_every_llama_layer_is_two_fused_norms_and_two_calls():
    ir = ir_after(LLAMA, "fuse")
    layer = ir.blocks["decoder_layer"]
    assert [(n.op, n.region.template if n.region else n.block) for n in layer.order()] == [
        ("region", "row_reduction"), ("call", "attn"), ("region", "row_reduction"), ("call", "mlp")]
    report = [d for d in ir.decisions if d.taken and d.block in ("decoder_layer", "model")]
    assert all(not (len(d.ops) == 1 and d.ops[0] in ("add", "rms_norm")) for d in report)


def test_select_kernels_gives_regions_that_compute_the_same_thing_one_function():
    ir = ir_after(LLAMA, "select_kernels")
    layer_norms = [n.region for n in ir.blocks["decoder_layer"].order() if n.region]
    final = next(n.region for n in ir.model.order() if n.region)
    assert layer_norms[0].function is layer_norms[1].function          # start and middle of a layer
    assert final.function is not layer_norms[0].function                # writes only the normalised value
    assert all(r.kernel is not None for r in (*layer_norms, final))
    qkv = next(n.region for n in ir.blocks["attention"].order() if n.region and n.region.fused_param)
    assert qkv.function is None and qkv.kernel is None                  # a FusedLinear module call


def test_the_pipeline_runs_its_passes_in_order_and_stops_where_asked():
    seen = []
    run_pipeline(load_spec(LLAMA), after=lambda name, ir: seen.append(name))
    assert seen == enabled() and "shard" not in seen          # tensor parallelism only when asked (--tp)
    assert "quantize" not in seen                              # quantization only when asked (--quant)
    seen.clear()
    run_pipeline(load_spec(LLAMA), {"tp": 2, "quant": "int8"}, after=lambda name, ir: seen.append(name))
    assert seen == NAMES
    seen.clear()
    run_pipeline(load_spec(LLAMA), {"fuse": False}, after=lambda name, ir: seen.append(name))
    assert "fuse" not in seen and "defer_carried_ops" not in seen and seen[0] == "lower"
    with pytest.raises(ValueError, match="unknown pass"):
        run_pipeline(load_spec(LLAMA), until="nope")


def test_print_after_shows_the_ir_after_that_pass(tmp_path, capsys):
    assert cli(["compile", LLAMA, "-o", str(tmp_path / "a"), "-q", "--print-after", "fuse"]) == 0
    out = capsys.readouterr().out
    assert "# IR after fuse" in out and "= region add_rms_norm[row_reduction](" in out
    assert cli(["compile", LLAMA, "-o", str(tmp_path / "b"), "-q", "--print-after", "lower"]) == 0
    out = capsys.readouterr().out
    assert "# IR after lower" in out and "region" not in out
    # a second run finds the artifact current and still prints the IR asked for
    assert cli(["compile", LLAMA, "-o", str(tmp_path / "b"), "-q", "--print-after", "lower"]) == 0
    out = capsys.readouterr().out
    assert "# IR after lower" in out and "region" not in out


@pytest.mark.parametrize("flags, name, flag", [([], "quantize", "--quant"), ([], "shard", "--tp"),
                                               (["--no-fuse"], "fuse", "--no-fuse")])
def test_print_after_a_pass_the_options_skip_names_the_flag_that_runs_it(tmp_path, capsys, flags, name, flag):
    assert cli(["compile", LLAMA, "-o", str(tmp_path / "a"), "-q", *flags, "--print-after", name]) == 2
    err = capsys.readouterr().err
    assert f"this compile skips the {name} pass" in err and flag in err
    assert not (tmp_path / "a").exists()


def test_the_command_line_offers_exactly_the_pipelines_passes():
    from tools.cli import PASS_NAMES
    assert PASS_NAMES == NAMES
