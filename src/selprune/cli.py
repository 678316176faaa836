"""The `selprune` command: parses arguments and calls the Python API.

Every failure ends with one line on stderr and an exit status that says what kind it was (errors.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import signal
import sys
import traceback
from pathlib import Path

import torch

from . import __version__
from .batching import is_oom
from .config import PRESETS, RunConfig, flag, preset, safe_name
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_OUT_OF_MEMORY,
    EXIT_TERMINATED,
    OutOfMemory,
    Terminated,
    UserError,
)

SHORT_FLAGS = {"output": "-o", "from_run": "--from"}
COMPARE_NAMES, COMPARE_NAME_CHARS = 3, 40  # runs/compare/<name1>+<name2>...: at most 3 names of 40 characters


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (usage is one --help away), like every other bad input."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"selprune: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, settings=RunConfig, skip=()) -> None:
    """One flag per field of a settings dataclass, typed by its annotation, with its help and choices from
    its metadata; fields in `skip` are left to the caller (e.g. a positional argument).

    A flag left out parses to None, so it overrides neither the preset nor the config file. Every bool has
    an off form (--no-compile) and an on form (--compile), to undo a preset or a file either way.
    """
    defaults, types = settings(), settings.field_types()
    for field in dataclasses.fields(settings):
        if field.name in skip:
            continue
        kind = types[field.name][0]
        default = getattr(defaults, field.name)
        shown = ("on" if default else "off") if kind is bool else " ".join(map(str, default)) if kind is tuple \
            else default
        text = field.metadata["help"] + (f" (default {shown})" if shown not in ("", None) else "")
        names = [flag(field.name), *([SHORT_FLAGS[field.name]] if field.name in SHORT_FLAGS else [])]
        if kind is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, help=text)
        elif kind is tuple:
            parser.add_argument(*names, action="extend", nargs="+", type=types[field.name][1],  # repeatable
                                choices=field.metadata["choices"], help=text)
        else:
            parser.add_argument(*names, type=kind, choices=field.metadata["choices"], help=text)


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="prune a model selectively and evaluate it after every step",
                       description="Selective pruning: remove what --forget needs and --retain does not.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named settings: paper (the paper's protocol, with "
                   "1,024-token chunks), demo (a short run, as in the README) or tiny (a smoke test); flags override it")
    p.add_argument("--config", metavar="FILE.toml", help="settings from a TOML file (as saved in a run folder); "
                   "flags override it")
    add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no console output")


def given_flags(args, settings) -> dict:
    """The settings a command line gave (flags left out parse to None and keep the defaults)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(settings) if getattr(args, f.name) is not None}


def _analysis_parser(sub, name: str, settings, summary: str, description: str, resumable: bool = False) -> None:
    """A command that analyses one run folder: its flags come from `settings`, whose `run` field is positional."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("run", help="the run folder, or an unlearning folder (selprune unlearn): its one step is the "
                   "checkpoint it kept")
    add_config_flags(p, settings, skip=("run",))
    if resumable:
        p.add_argument("--resume", action="store_true", help=f"continue the results in RUN/{name}")
    p.add_argument("--quiet", "-q", action="store_true", help="no console output")


def _analysis_parsers(sub) -> None:
    from .inspection.settings import InspectConfig
    from .relearn import RelearnConfig

    _analysis_parser(
        sub, "relearn", RelearnConfig, "attack a run's pruned (or an unlearning's) model by fine-tuning: does what "
        "it forgot come back?",
        "The relearning attack, with controls (the unpruned model and, for a pruning run, a random pruning of as "
        "many units). "
        "Fine-tunes on data the run never scored or evaluated and measures how much of the lost forget accuracy "
        "returns. Costs with the embedded model on 2 idle CPU cores (AMD EPYC), for each model and attack: about "
        "4 s a fine-tuning step of 4 x 256 tokens (about 4 plain forward passes), about 9 s an evaluation point "
        "(2 x 4,096 tokens, about one plain forward over them), so about 5 minutes at the defaults "
        "(docs/PERFORMANCE.md).", resumable=True)
    _analysis_parser(
        sub, "inspect", InspectConfig, "what the pruned (or unlearned) model can still do: generations, checks, "
        "logit lens",
        "Continue held-out prompts with the original model and after the chosen steps (an unlearning folder's "
        "one step: the checkpoint it kept); check the text (Python "
        "functions parse, same language, fluency); read every layer through the final norm and head (logit lens). "
        "Results: RUN/inspect/ and RUN/report.html. Costs with the embedded model on 2 CPU cores, at the defaults, "
        "for each model (the original one and each step): generation about 20 s, logit lens about 40 s; the checks "
        "of all models together 13 to 18 s; plus about 10 s to load the model twice (docs/PERFORMANCE.md).")


def cmd_relearn(args) -> None:
    from .allocator import keep_freed_memory
    from .relearn import RelearnConfig, relearn

    keep_freed_memory()
    flags = given_flags(args, RelearnConfig)
    config = RelearnConfig.from_dict(flags, source="command line")
    saved = config.results_folder().settings_path
    if args.resume and saved.is_file():  # the saved settings are the base: --resume alone continues
        config = RelearnConfig.from_dict(flags, RelearnConfig.from_toml(saved), source="command line")
    relearn(config, resume=args.resume, quiet=args.quiet)


def cmd_inspect(args) -> None:
    from .allocator import keep_freed_memory
    from .inspection import InspectConfig, inspect_run

    keep_freed_memory()
    print(inspect_run(InspectConfig.from_dict(given_flags(args, InspectConfig), source="command line"),
                      quiet=args.quiet))


def config_from_args(args, settings=RunConfig):
    """defaults < preset (run's) < --config file < flags; with --resume, the folder's config is the base."""
    from .rundir import RunFolder

    config = preset(args.preset) if getattr(args, "preset", None) else settings()
    if args.config:
        config = settings.from_toml(args.config, config)
    flags = given_flags(args, settings)
    if args.resume:
        folder = flags.get("output") or str(settings.from_dict(flags, config).output_dir)
        saved = RunFolder(folder).config_path
        if saved.is_file():
            config = settings.from_toml(saved)
    return settings.from_dict(flags, config, source="command line")


def cmd_run(args) -> None:
    from .allocator import keep_freed_memory
    from .run import run

    keep_freed_memory()
    run(config_from_args(args), resume=args.resume, quiet=args.quiet)


def _unlearn_parser(sub) -> None:
    from .unlearn import UnlearnConfig

    p = sub.add_parser("unlearn", help="fine-tuning unlearning (ga, graddiff, npo, rmu) on a pruning run's data, "
                       "to compare with pruning", description="Fine-tune the model to forget --forget while keeping "
                       "--retain, with one of the field's methods, on the scoring split a pruning run with the same "
                       "settings scores on, evaluated on its evaluation split every --eval-every steps. The folder has "
                       "a run's shape (config.toml, metrics.csv with the unlearning step as the step, the report) and "
                       "holds the kept model in RUN/model, so report and relearn --control take it as they take a run.")
    p.add_argument("--config", metavar="FILE.toml", help="settings from a TOML file (as saved in an unlearning "
                   "folder); flags override it")
    add_config_flags(p, UnlearnConfig)
    p.add_argument("--resume", action="store_true", help="continue the unlearning in the output folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no console output")


def cmd_unlearn(args) -> None:
    from .allocator import keep_freed_memory
    from .unlearn import UnlearnConfig, unlearn

    keep_freed_memory()
    unlearn(config_from_args(args, UnlearnConfig), resume=args.resume, quiet=args.quiet)


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="a grid of runs from a TOML file: run what is missing, then summarise and compare",
                       description="Every combination of a grid file's lists is an ordinary run folder in the "
                       "sweep's folder (sweeps/paper.toml shows the format); a variant with a method, such as "
                       "{method = \"npo\"}, is an unlearning (selprune unlearn) beside the pruning runs. A finished "
                       "run is skipped and a partial "
                       "one resumed, so a sweep that was interrupted continues when it is run again. At the end: "
                       "SWEEP/summary.csv and summary.md (each run's headline numbers and wall time) and, for each "
                       "[[compare]] and pair, an overlay report in SWEEP/compare/. Cost with the embedded model on 2 "
                       "CPU cores: sweeps/paper.toml, 32 runs of 8 steps at 4,096 scoring and 4,096 evaluation "
                       "tokens per dataset, took 1 h 14 min of run time, 1 min 20 s to 2 min 39 s a run "
                       "(docs/RESULTS.md); --dry-run estimates what is left from the timings of earlier sweeps on "
                       "the machine.")
    p.add_argument("grid", metavar="GRID.toml", help="the grid file")
    p.add_argument("--output", "-o", metavar="DIR", help="the sweep's folder (default runs/sweeps/GRID, the grid "
                   "file's name without .toml)")
    p.add_argument("--dry-run", action="store_true", help="list the runs (new, partial, finished) and what is left "
                   "to run, in tokens and, from earlier timings, in time; run and write nothing")
    p.add_argument("--results", metavar="FILE.md", help="also rewrite the tables between this sweep's markers in "
                   "FILE.md (<!-- sweep: GRID table: KIND --> ... <!-- /sweep -->, KIND one of overview, cost, "
                   "runs PAIR, plots PAIR) and copy the comparisons' plots to results/ beside it; the rest of the "
                   "file is kept as it is")
    p.add_argument("--quiet", "-q", action="store_true", help="no console output from the runs themselves")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="run each run as a Ray task, one "
                   "per worker (pip install -e \".[ray]\"): on the Ray cluster whose head is at ADDRESS "
                   "(HOST:6379, or auto for the cluster this machine belongs to), or without ADDRESS on a Ray "
                   "instance started here; every machine needs selprune and this folder at the same path "
                   "(README: Sweeps on a Ray cluster)")
    p.add_argument("--ray-cpus", type=float, metavar="N", help="CPUs Ray gives each run (default 1; a machine "
                   "runs as many runs at once as its CPUs allow)")
    p.add_argument("--ray-gpus", type=float, metavar="N", help="GPUs Ray gives each run (default 0)")


def cmd_sweep(args) -> None:
    from .allocator import keep_freed_memory
    from .sweep import sweep
    from .sweep.on_ray import Cluster

    keep_freed_memory()
    asks = {"cpus": args.ray_cpus, "gpus": args.ray_gpus}
    if args.ray is None and any(value is not None for value in asks.values()):
        raise UserError("--ray-cpus and --ray-gpus are what each run asks Ray for: add --ray, or drop them")
    cluster = Cluster(args.ray, **{k: v for k, v in asks.items() if v is not None}) if args.ray else None
    sweep(args.grid, output=args.output, dry_run=args.dry_run, results=args.results, quiet=args.quiet,
          cluster=cluster)


def cmd_report(args) -> None:
    from .report import write_report

    print(write_report(args.runs, report_folder(args.runs, args.output)))


def report_folder(runs: list[str], output: str | None) -> Path:
    """Where `selprune report` writes. Never into a run folder other than the one run reported: its
    report.html is that run's own. Several runs go to runs/compare/<name1>+<name2>... by default."""
    from .rundir import RunFolder

    if output is None:
        return Path(runs[0]) if len(runs) == 1 else Path("runs", "compare", compare_name(runs))
    out = Path(output)
    own = len(runs) == 1 and out.resolve() == Path(runs[0]).resolve()
    if RunFolder(out).metrics_path.is_file() and not own:
        raise UserError(f"{out} is a run folder, and its report.html is that run's own: "
                        "write the report elsewhere, such as -o runs/compare/NAME, or leave out -o")
    return out


def compare_name(runs: list[str]) -> str:
    """<name1>+<name2>... of the runs' folder names; a long list ends +N-more, so the name stays a legal one."""
    names = [(safe_name(Path(run).resolve().name).lstrip(".") or "run")[:COMPARE_NAME_CHARS] for run in runs]
    more = len(names) - COMPARE_NAMES
    return "+".join(names[:COMPARE_NAMES] + ([f"{more}-more"] if more > 0 else []))


def cmd_list(args) -> None:
    if args.what == "models":
        from .models import installed_aliases

        for m in installed_aliases():
            state = "installed" if m["installed"] else f"not installed ({m['install']})"
            print(f"{m['alias']:14s} {state:12s}  {m['description']}")
    elif args.what == "architectures":
        from .arch import ARCHITECTURES

        print(f"{'model_type':12s} {'ff neurons (input of)':28s} {'attn-value':38s} attn-preout / heads")
        for name, a in sorted(ARCHITECTURES.items()):
            kind = " (masked LM)" if a.masked_lm else ""
            print(f"{name:12s} {a.ff_out:28s} {a.value:38s} {a.out}{kind}")
        print("\nsizes per layer: ff = input width of the ff module; attn-value = num_key_value_heads x head_dim; "
              "attn-preout = input width of the output projection; attn-head = num_attention_heads "
              "(from the model's config). `name:layout` marks a fused projection.")
    else:
        from .data import list_builtin

        for d in list_builtin():
            print(f"{d['name']:8s} {d['documents']:6d} docs {d['characters'] / 1e6:6.2f} M chars  "
                  f"{', '.join(d['languages'])}  [{', '.join(d['licences'])}]")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="selprune", description="Machine unlearning by selective pruning.")
    parser.add_argument("--version", action="version", version=f"selprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _analysis_parsers(sub)
    _unlearn_parser(sub)
    _sweep_parser(sub)
    rep = sub.add_parser("report", help="HTML report and plots of one or more runs (overlaid)")
    rep.add_argument("runs", nargs="+", help="run folders")
    rep.add_argument("--output", "-o", help="where to write the report (default: the run's own folder for one "
                     "run, runs/compare/NAME1+NAME2... for several); never another run's folder")
    lst = sub.add_parser("list", help="list built-in models, supported architectures or built-in datasets")
    lst.add_argument("what", choices=["models", "architectures", "datasets"])
    return parser


@contextlib.contextmanager
def sigterm_raises():
    """Within: SIGTERM raises Terminated, instead of ending the process on the spot."""
    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# What an interrupted command leaves, and how to go on (the others write their results only when done).
SAVED = {"run": "finished steps are saved (continue with --resume)",
         "relearn": "finished attacks are saved (continue with --resume)",
         "unlearn": "finished checkpoints are saved (continue with --resume)",
         "sweep": "finished runs and steps are saved (run the same command again to continue)"}
NOTHING_SAVED = "nothing was written; run it again"
OUT_OF_MEMORY = "out of memory: lower --batch-size or --chunk-len, or use --dtype bfloat16"
ENVIRONMENT_FAILURES = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere with --output",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere with --output",
    errno.EACCES: "permission denied: change the permissions, or write elsewhere with --output",
    errno.EPERM: "operation not permitted: change the permissions, or write elsewhere with --output",
    errno.EROFS: "the file system is read-only: write elsewhere with --output",
    errno.EIO: "input/output error: the disk or network file system failed; check it, then run again",
}
BUG = "selprune: internal error: this is a bug; please report it with the traceback above"


def explain(exc: BaseException, command: str = "run") -> tuple[int, str]:
    """The exit status for exc (errors.py) and the line that says what happened and what to do."""
    if isinstance(exc, UserError):
        return EXIT_BAD_INPUT, f"selprune: error: {exc}"
    if isinstance(exc, OutOfMemory):
        return EXIT_OUT_OF_MEMORY, f"selprune: error: {exc}"
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (isinstance(exc, RuntimeError) and is_oom(exc)):
        return EXIT_OUT_OF_MEMORY, f"selprune: error: {OUT_OF_MEMORY}"
    if isinstance(exc, OSError):
        cause = ENVIRONMENT_FAILURES.get(exc.errno) or exc.strerror or str(exc)
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        return EXIT_ENVIRONMENT, f"selprune: error: {paths + ': ' if paths else ''}{cause}"
    saved = SAVED.get(command, NOTHING_SAVED)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"selprune: interrupted; {saved}"
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED, f"selprune: terminated; {saved}"
    return EXIT_BUG, BUG


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "relearn": cmd_relearn, "inspect": cmd_inspect, "report": cmd_report,
               "unlearn": cmd_unlearn, "sweep": cmd_sweep, "list": cmd_list}[args.command]
    try:
        with sigterm_raises():
            handler(args)
    except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 (a bug's traceback is printed)
        status, line = explain(exc, args.command)
        if status == EXIT_BUG:
            traceback.print_exc()
        print(line, file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
