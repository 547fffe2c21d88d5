"""The `graphspec` command line: compile, validate, diff, show, run, schema."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compiler.errors import SpecError

# the compiler's pipeline, by name (compiler/passes/__init__.py NAMES); kept here as data so that
# building the parser imports nothing heavy
PASS_NAMES = ["lower", "check_names", "check_weight_rules", "fold_constants", "derive_contract", "shard", "defer_carried_ops",
              "keep_positions", "fuse",
              "check_expect_fused", "select_kernels"]


def _cmd_compile(args) -> int:
    if args.resolved:
        return _print_resolved(args.spec)
    from compiler.pipeline import compile_spec
    options = {"fuse": False} if args.no_fuse else {}
    if args.print_after:
        options["print_after"] = args.print_after
    if args.aot:
        options["aot"] = args.aot.split(",")
    if args.tp:
        options["tp"] = args.tp
    result = compile_spec(args.spec, args.output, options)
    m = result.manifest
    state = "cache hit (nothing rebuilt)" if result.cache_hit else "compiled"
    print(f"{m['name']}: {state} in {result.seconds * 1000:.1f} ms -> {result.directory}")
    if not args.quiet:
        print(f"  blocks: {', '.join(m['blocks'])}")
        print(f"  ops:    {', '.join(f'{k} x{v}' for k, v in m['ops'].items())}")
        fusion = m.get("fusion", {})
        if fusion.get("enabled"):
            groups = [g for gs in fusion["groups"].values() for g in gs]
            print(f"  fusion: {len(groups)} groups ({', '.join(g['name'] for g in groups)}), "
                  f"{len(m.get('kernels', {}))} Triton kernels, {len(fusion['refused'])} refused (--explain)")
        else:
            print("  fusion: off (--no-fuse)")
        print("  params:")
        for name, formula in m["params"].items():
            print(f"    {name}: {formula}")
    if args.dump_ir:
        print((result.directory / "ir.txt").read_text())
    if args.explain:
        print((result.directory / "fusion.txt").read_text(), end="")
        if (result.directory / "parallel.txt").exists():
            print((result.directory / "parallel.txt").read_text(), end="")
    return 0


def _ranks(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"the number of ranks must be at least 1, got {n}")
    return n


def _print_resolved(path: str) -> int:
    """The spec with `extends` resolved, as YAML that loads back to the same spec."""
    import yaml

    from compiler.spec import load_spec
    spec = load_spec(path)   # validated: a resolved spec that would not compile is reported instead
    sys.stdout.write(f"# {path} with extends resolved\n")
    sys.stdout.write(yaml.safe_dump(spec.data, sort_keys=False, default_flow_style=None, width=110,
                                    allow_unicode=True))
    return 0


def _cmd_validate(args) -> int:
    from compiler.passes import run_pipeline
    from compiler.spec import load_spec
    failed = 0
    for path in args.specs:
        try:
            run_pipeline(load_spec(path))   # every pass that can refuse a spec; nothing is written
        except SpecError as err:
            failed += 1
            for problem in err.problems:
                print(problem)
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def _cmd_diff(args) -> int:
    """Exit 0 when the architectures are the same, 1 when they differ, 2 when a spec is broken (like diff)."""
    import os

    from compiler.diff import diff_specs
    from compiler.spec import load_spec
    from tools import diff_format
    try:
        result = diff_specs(load_spec(args.a), load_spec(args.b))
    except SpecError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    if args.format == "json":
        text = diff_format.render_json(result)
    elif args.format == "markdown":
        text = diff_format.render_markdown(result)
    else:
        colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                            and not os.environ.get("NO_COLOR"))
        text = diff_format.render_text(result, colour=colour)
    sys.stdout.write(text)
    return 0 if result["equal"] else 1


def _cmd_show(args) -> int:
    from compiler.passes import run_pipeline
    from compiler.spec import load_spec
    from tools.show import drawing, to_dot, to_mermaid
    spec = load_spec(args.spec)
    ir = run_pipeline(spec, until=args.after)
    picture = drawing(ir)
    text = to_mermaid(picture) if args.format == "mermaid" else to_dot(picture, spec.name)
    if args.output:
        Path(args.output).write_text(text)
        print(f"{spec.name}: {args.format} drawing of {len(picture.clusters)} blocks -> {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_schema(args) -> int:
    from compiler.schema import schema_text
    sys.stdout.write(schema_text())
    return 0


def _cmd_run(args) -> int:
    import torch

    import runtime
    opts = {"dtype": args.dtype, "device": args.device, "tp_plan": args.tp_plan}
    model = (runtime.load(args.artifact, args.checkpoint, **opts) if args.artifact
             else runtime.from_pretrained(args.checkpoint, **opts))
    if args.prompt is not None:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(Path(args.checkpoint) / "tokenizer.json"))
        ids = torch.tensor([tok.encode(args.prompt).ids])
    else:
        ids = torch.tensor([[int(t) for t in args.ids.split(",")]])
    out = model.generate(ids.to(model.device), max_new_tokens=args.max_new_tokens,
                         eos_token_id=model.config.get("eos_token_id"))
    if model.load_report.get("tensor_parallel", {}).get("rank", 0) != 0:
        return 0                   # every rank generated the same tokens; rank 0 prints them
    new = out[0, ids.shape[1]:].tolist()
    print("tokens:", new)
    if args.prompt is not None:
        print("text:", tok.decode(new))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphspec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a spec into an artifact directory")
    p.add_argument("spec")
    p.add_argument("-o", "--output", help="artifact directory (default: the user cache)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--dump-ir", action="store_true", help="print the IR, one line per op")
    p.add_argument("--print-after", metavar="PASS", choices=PASS_NAMES,
                   help=f"print the IR after this pass ({', '.join(PASS_NAMES)})")
    p.add_argument("--resolved", action="store_true",
                   help="print the spec with extends resolved (plain YAML) instead of compiling")
    p.add_argument("--explain", action="store_true",
                   help="print the fusion report: per block, the groups formed and the fusions refused, with reasons")
    p.add_argument("--no-fuse", "-O0", action="store_true", help="compile without the fusion pass")
    p.add_argument("--tp", type=_ranks, metavar="N", help="derive a tensor-parallel plan (the shard pass) for N ranks; "
                   "--explain prints it, with every collective it inserts")
    p.add_argument("--aot", metavar="TARGETS", help="also compile every Triton kernel ahead of time for these "
                   "GPU targets (e.g. sm_80,sm_90; fp32 and bf16) and record shared memory and warps in the manifest")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("validate", help="check specs; one line per problem, exit 1 if any")
    p.add_argument("specs", nargs="+")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("diff", help="semantic diff of two architectures; exit 0 if equal, 1 if not")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--format", choices=["text", "json", "markdown"], default="text")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the text output (auto: only on a terminal, and not when NO_COLOR is set)")
    p.set_defaults(func=_cmd_diff)

    p = sub.add_parser("show", help="draw the architecture: Mermaid flowchart or Graphviz dot")
    p.add_argument("spec")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument("--after", metavar="PASS", choices=PASS_NAMES,
                   help="draw the IR after this pass (fused groups as boxes after 'fuse'); default: all passes")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("schema", help="print the JSON Schema of the spec language")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("run", help="greedy generation from a checkpoint folder")
    p.add_argument("checkpoint")
    p.add_argument("--artifact", help="a compiled artifact (default: pick and compile the spec)")
    p.add_argument("--prompt", help="text, tokenized with the folder's tokenizer.json")
    p.add_argument("--ids", default="1,2,3", help="comma-separated token ids when there is no prompt")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16 or auto")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (under torchrun: each rank's own GPU)")
    p.add_argument("--tp-plan", choices=["auto"], help="tensor parallelism over torchrun's ranks, by the plan the "
                   "compiler derives (torchrun --nproc-per-node N -m tools.cli run ... --tp-plan auto)")
    p.set_defaults(func=_cmd_run)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 1
    except Exception as err:  # our own loaders raise these with full context already
        from runtime.errors import ArtifactError, CheckpointError, ConfigError
        if isinstance(err, (ArtifactError, CheckpointError, ConfigError)):
            print(f"error: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
