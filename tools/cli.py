"""The `graphspec` command line: compile, validate, diff, show, ops, run, schema.

Every bad input is one line on stderr and exit status 2 (a spec, a checkpoint, an artifact, an
argument); 1 is validate's or diff's "found something"; 3 is a bug in graphspec (`--debug` shows the
traceback)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path

from compiler.errors import SpecError

# the compiler's pipeline, by name (compiler/passes/__init__.py NAMES); kept here as data so that
# building the parser imports nothing heavy
PASS_NAMES = ["lower", "check_names", "check_weight_rules", "fold_constants", "derive_contract", "shard", "quantize",
              "defer_carried_ops",
              "keep_positions", "fuse",
              "check_expect_fused", "select_kernels"]


class UsageError(Exception):
    """A command-line argument is wrong: one line naming it, exit status 2. `prog`: the command whose
    parser found it (`graphspec run`)."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


AOT_TARGET = re.compile(r"sm_[0-9]{2,3}")


# the command-line flag that turns each optional pass's compile option on or off
OPTION_FLAGS = {"tp": "--tp N", "quant": "--quant SCHEME", "fuse": "fusion (on unless --no-fuse)"}


def _check_pass_runs(name: str, options: dict) -> None:
    """--print-after a pass these options skip would print nothing: say which flag runs it."""
    from compiler.passes import PASSES, enabled
    if name in enabled(options):
        return
    needs = next(p.needs for p in PASSES if p.name == name)
    raise UsageError(f"--print-after {name}: this compile skips the {name} pass; it runs with "
                     f"{OPTION_FLAGS.get(needs, needs)}")


def _cmd_compile(args) -> int:
    if args.resolved:
        return _print_resolved(args.spec)
    from compiler.pipeline import compile_spec
    options = {"fuse": False} if args.no_fuse else {}
    if args.print_after:
        options["print_after"] = args.print_after
    if args.output is not None and not args.output.strip():
        raise UsageError("-o/--output: an empty path; give the artifact directory")
    if args.aot is not None:
        targets = args.aot.split(",")
        bad = [t for t in targets if not AOT_TARGET.fullmatch(t)]
        if bad:
            raise UsageError(f"--aot: {bad[0]!r} is not a GPU target; expected a comma-separated list such as sm_80,sm_90")
        options["aot"] = list(dict.fromkeys(targets))
    if args.tp:
        options["tp"] = args.tp
    if args.quant:
        options["quant"] = args.quant
    if args.print_after:
        _check_pass_runs(args.print_after, options)
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
        if "quantized" in m:
            q = m["options"]["quant"]
            print(f"  quant:  {q['bits']} bits{'' if q['group_size'] is None else ', groups of ' + str(q['group_size'])}"
                  f"{'' if q['sym'] else ', zero points'}: {', '.join(m['quantized']) or 'nothing'}; kept in float: "
                  f"{', '.join(q['modules_to_not_convert']) or 'nothing'}")
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


def _quant(text: str) -> dict:
    """--quant: int8, int4 or a quantization_config as JSON text, as the compile option (its dict)."""
    from runtime.quant.config import QuantConfig
    try:
        return QuantConfig.parse(json.loads(text) if text.lstrip().startswith("{") else text).to_dict()
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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


def _cmd_ops(args) -> int:
    from compiler import op_reference
    from compiler.errors import did_you_mean
    if args.markdown:
        sys.stdout.write(op_reference.markdown())
        return 0
    if args.name is None:
        sys.stdout.write(op_reference.op_lines())
        return 0
    ops = {op.name: op for op in op_reference.public_ops()}
    if args.name not in ops:
        print(f"error: no op '{args.name}'{did_you_mean(args.name, ops)} (graphspec ops lists them)", file=sys.stderr)
        return 1
    sys.stdout.write(op_reference.op_page(ops[args.name]))
    return 0


def _token_ids(text: str) -> list[int]:
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"[0-9]{1,18}", part):
            raise UsageError(f"--ids: {part!r} is not a token id; expected comma-separated non-negative integers "
                             "such as 1,2,3")
        ids.append(int(part))
    return ids


def _cmd_run(args) -> int:
    """Generate from a checkpoint: the prompt's reply streams as text (token ids without a prompt)."""
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens: {args.max_new_tokens} is negative")
    ids = _token_ids(args.ids) if args.prompt is None else None
    import torch

    import runtime
    from runtime.errors import GenerationError
    from runtime.generation.text_streamer import TextStreamer
    opts = {"dtype": args.dtype, "device": args.device, "tp_plan": args.tp_plan}
    model = (runtime.load(args.artifact, args.checkpoint, **opts) if args.artifact
             else runtime.from_pretrained(args.checkpoint, **opts))
    tok = model.tokenizer
    # under torchrun every rank generates the same tokens; rank 0 shows them
    shows = model.load_report.get("tensor_parallel", {}).get("rank", 0) == 0
    if args.prompt is not None:
        if tok is None:
            raise GenerationError(f"{args.checkpoint} has no tokenizer.json to encode --prompt with; "
                                  "give token ids with --ids instead")
        if args.chat:
            ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        else:
            ids = tok.encode(args.prompt)
        if not ids:
            raise GenerationError("--prompt encodes to no tokens")
    elif args.chat:
        raise UsageError("--chat needs --prompt (the user message)")
    options = {name: getattr(args, name) for name in ("do_sample", "temperature", "top_k", "top_p", "num_beams",
                                                      "max_new_tokens") if getattr(args, name) is not None}
    generator = torch.Generator(device=model.device)
    if args.seed is None:
        generator.seed()
    else:
        generator.manual_seed(args.seed)
    stream = args.prompt is not None and options.get("num_beams", 1) == 1 and shows
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True) if stream else None
    out = model.generate(torch.tensor([ids], device=model.device), streamer=streamer, generator=generator, **options)
    if not shows:
        return 0
    # an encoder-decoder returns its decoder's start token + the new tokens, a decoder prompt + new tokens
    new = out[0, 1 if model.contract.generate.start is not None else len(ids):]
    if args.prompt is None:
        print("tokens:", new.tolist())
    elif not stream:
        print(tok.decode(new, skip_special_tokens=True))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)


EPILOG = """exit status: 0 done; 1 validate found problems or diff found differences; 2 bad input (a spec, a
checkpoint, an artifact, an argument: one line per problem on stderr); 3 a bug in graphspec (--debug
shows the traceback to report)"""


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="graphspec", description=__doc__, epilog=EPILOG)
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)


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
    p.add_argument("--quant", type=_quant, metavar="SCHEME", help="the quantize pass: int8 (per channel), int4 "
                   "(groups of 32) or a quantization_config as JSON ({\"bits\": 4, \"group_size\": 128, \"sym\": false, "
                   "\"modules_to_not_convert\": [\"lm_head\", \"layers.0.*\"]}); the loader quantizes the marked linears")
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

    p = sub.add_parser("ops", help="the op reference: one line per op, or one op in full")
    p.add_argument("name", nargs="?", help="an op: what it computes, operands, attributes, shape rule, an example")
    p.add_argument("--markdown", action="store_true", help="every op as markdown (schemas/ops.md)")
    p.set_defaults(func=_cmd_ops)

    p = sub.add_parser("run", help="generate text (or token ids) from a checkpoint folder or hub id")
    p.add_argument("checkpoint", help="a checkpoint folder, or a hub id already in the Hugging Face cache")
    p.add_argument("--artifact", help="a compiled artifact (default: pick and compile the spec)")
    p.add_argument("--prompt", help="text, encoded with the checkpoint's tokenizer.json; the reply streams")
    p.add_argument("--chat", action="store_true", help="wrap --prompt as a user message in the chat template")
    p.add_argument("--ids", default="1,2,3", help="comma-separated token ids when there is no prompt")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--do-sample", action="store_true", default=None, help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, help="seed of the sampling draws (default: a fresh one each run)")
    p.add_argument("--num-beams", type=int, help="beam search (the text is printed when the search ends)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "auto"],
                   help="float32 (default), bfloat16, float16 or auto (config.json's)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (under torchrun: each rank's own GPU)")
    p.add_argument("--tp-plan", choices=["auto"], help="tensor parallelism over torchrun's ranks, by the plan the "
                   "compiler derives (torchrun --nproc-per-node N -m tools.cli run ... --tp-plan auto)")
    p.set_defaults(func=_cmd_run)

    for p in sub.choices.values():   # also accepted after the command
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(f"{err.prog or 'graphspec'}: error: {err}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`graphspec compile --print-after fuse | head`): stop quietly, as cat does;
        # stdout is pointed at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        return _report(err, f"graphspec {args.command}")
    except KeyboardInterrupt:
        print("graphspec: interrupted", file=sys.stderr)
        return 130


def _report(err: Exception, prog: str) -> int:
    """One line per problem on stderr, after the command's name; the exit status says whose fault it is."""
    from runtime.errors import ArtifactError, CheckpointError, ConfigError, GenerationError, InputError
    if isinstance(err, SpecError):
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    if isinstance(err, (UsageError, ArtifactError, CheckpointError, ConfigError, GenerationError, InputError)):
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if isinstance(err, OSError):   # a file or folder named on the command line, a full disk, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    print(f"{prog}: internal error: {type(err).__name__}: {_one_line(err)} "
          "(a bug in graphspec; rerun with --debug for the traceback)", file=sys.stderr)
    return 3


def _one_line(err: Exception) -> str:
    return " / ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
