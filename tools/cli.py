"""The `graphspec` command line: compile, validate, diff, show, run, schema."""
from __future__ import annotations

import argparse
import re
import sys
import traceback
from pathlib import Path

from compiler.errors import SpecError


class UsageError(Exception):
    """A command-line argument is wrong: one line naming it, exit status 2."""


AOT_TARGET = re.compile(r"sm_[0-9]{2,3}")


def _cmd_compile(args) -> int:
    if args.resolved:
        return _print_resolved(args.spec)
    from compiler.pipeline import compile_spec
    options = {"fuse": False} if args.no_fuse else {}
    if args.output is not None and not args.output.strip():
        raise UsageError("-o/--output: an empty path; give the artifact directory")
    if args.aot is not None:
        targets = args.aot.split(",")
        bad = [t for t in targets if not AOT_TARGET.fullmatch(t)]
        if bad:
            raise UsageError(f"--aot: {bad[0]!r} is not a GPU target; expected a comma-separated list such as sm_80,sm_90")
        options["aot"] = list(dict.fromkeys(targets))
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
    return 0


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
    from compiler.lower import lower
    from compiler.spec import load_spec
    from compiler.weight_rules import check_rules
    failed = 0
    for path in args.specs:
        try:
            spec = load_spec(path)
            lower(spec)
            problems = check_rules(spec)
            if problems:
                raise SpecError(problems)
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
    from compiler.lower import lower
    from compiler.spec import load_spec
    from tools.show import drawing, to_dot, to_mermaid
    spec = load_spec(args.spec)
    ir = lower(spec)
    groups = None
    if getattr(args, "after", None) == "fusion":
        from compiler.passes.fusion import fuse
        plan = fuse(ir)
        groups = {block: [(f"{g.name} [{g.template}]", list(g.nodes)) for g in gs] for block, gs in plan.groups.items()}
    picture = drawing(ir, groups)
    text = to_mermaid(picture) if args.format == "mermaid" else to_dot(picture, spec.name)
    if args.output:
        Path(args.output).write_text(text)
        print(f"{spec.name}: {args.format} drawing of {len(picture.clusters)} blocks -> {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _has_fusion_pass() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("compiler.passes.fusion") is not None
    except ModuleNotFoundError:
        return False


def _cmd_schema(args) -> int:
    from compiler.schema import schema_text
    sys.stdout.write(schema_text())
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


def _tokenizer(folder: Path):
    """The folder's tokenizer.json, read before the model is loaded (a bad one is reported first)."""
    from runtime.files import JSON_LIMIT, read_regular
    path = folder / "tokenizer.json"
    try:
        text = read_regular(path, JSON_LIMIT).decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"--prompt: {path} does not exist; give token ids with --ids instead") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--prompt: cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_str(text)
    except BaseException as err:  # the tokenizers library panics (a BaseException) on some malformed files
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise UsageError(f"--prompt: {path} is not a tokenizer the tokenizers library can load: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _cmd_run(args) -> int:
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens: {args.max_new_tokens} is negative")
    tok = _tokenizer(Path(args.checkpoint)) if args.prompt is not None else None
    ids = _token_ids(args.ids) if tok is None else None
    import torch

    import runtime
    model = (runtime.load(args.artifact, args.checkpoint, dtype=args.dtype) if args.artifact
             else runtime.from_pretrained(args.checkpoint, dtype=args.dtype))
    ids = torch.tensor([tok.encode(args.prompt).ids if tok is not None else ids])
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, eos_token_id=model.config.get("eos_token_id"))
    new = out[0, ids.shape[1]:].tolist()
    print("tokens:", new)
    if args.prompt is not None:
        print("text:", tok.decode(new))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


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
    p.add_argument("--resolved", action="store_true",
                   help="print the spec with extends resolved (plain YAML) instead of compiling")
    p.add_argument("--explain", action="store_true",
                   help="print the fusion report: per block, the groups formed and the fusions refused, with reasons")
    p.add_argument("--no-fuse", "-O0", action="store_true", help="compile without the fusion pass")
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
    if _has_fusion_pass():
        p.add_argument("--after", choices=["fusion"], help="draw the fusion pass's groups as boxes")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("schema", help="print the JSON Schema of the spec language")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("run", help="greedy generation from a checkpoint folder")
    p.add_argument("checkpoint")
    p.add_argument("--artifact", help="a compiled artifact (default: pick and compile the spec)")
    p.add_argument("--prompt", help="text, tokenized with the folder's tokenizer.json")
    p.add_argument("--ids", default="1,2,3", help="comma-separated token ids when there is no prompt")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "auto"],
                   help="float32 (default), bfloat16, float16 or auto (config.json's)")
    p.set_defaults(func=_cmd_run)

    for p in sub.choices.values():   # also accepted after the command
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(f"graphspec: error: {err}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        return _report(err)
    except KeyboardInterrupt:
        print("graphspec: interrupted", file=sys.stderr)
        return 130


def _report(err: Exception) -> int:
    """One line per problem on stderr; the exit status says whose fault it is."""
    from runtime.errors import ArtifactError, CheckpointError, ConfigError
    if isinstance(err, SpecError):
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    if isinstance(err, UsageError):
        print(f"graphspec: error: {err}", file=sys.stderr)
        return 2
    if isinstance(err, (ArtifactError, CheckpointError, ConfigError)):
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    if isinstance(err, OSError):   # a file or folder named on the command line, a full disk, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    print(f"graphspec: internal error: {type(err).__name__}: {_one_line(err)} "
          "(a bug in graphspec; rerun with --debug for the traceback)", file=sys.stderr)
    return 3


def _one_line(err: Exception) -> str:
    return " / ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
