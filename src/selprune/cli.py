"""The `selprune` command: parses arguments and calls the Python API. Bad input -> one line, exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from . import __version__
from .config import PRESETS, SCORERS, SELECTIONS, RunConfig, preset
from .errors import UserError

EXIT_BAD_INPUT = 2


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="prune a model selectively and evaluate it after every step",
                       description="Selective pruning: remove what --forget needs and --retain does not.")
    d = RunConfig()
    p.add_argument("--preset", choices=sorted(PRESETS), help="named settings: paper, demo (README, ~10 min "
                   "on 2 CPU cores) or tiny (smoke test); flags override it")
    p.add_argument("--config", metavar="FILE.toml", help="settings from a TOML file (as saved in a run folder)")
    p.add_argument("--model", help=f"alias, Hugging Face id, local folder or .gguf (default {d.model})")
    p.add_argument("--forget", help=f"dataset to forget: built-in name, file, folder[/glob], .jsonl, "
                   f"hf:NAME[:CONFIG][:SPLIT] (default {d.forget})")
    p.add_argument("--retain", help=f"dataset to retain, same forms (default {d.retain})")
    p.add_argument("--group", choices=["ff", "attn-value", "attn-preout", "attn-head"],
                   help=f"what to prune (default {d.group})")
    p.add_argument("--scorer", choices=SCORERS, help=f"importance function (default {d.scorer})")
    p.add_argument("--steps", type=int, help=f"pruning steps (default {d.steps})")
    p.add_argument("--fraction", type=float, help=f"fraction of the group's units pruned per step "
                   f"(default {d.fraction})")
    p.add_argument("--score-tokens", type=int, help=f"scoring tokens per dataset (default {d.score_tokens})")
    p.add_argument("--eval-tokens", type=int, help=f"evaluation tokens per dataset (default {d.eval_tokens})")
    p.add_argument("--chunk-len", type=int, help=f"tokens per chunk (default {d.chunk_len})")
    p.add_argument("--selection", choices=SELECTIONS, help="rank units across layers (global, the default) "
                   "or prune the same fraction in every layer")
    p.add_argument("--eps", type=float, help="score = I(forget) / (I(retain) + eps); default 1e-3 for ff, "
                   "1e-4 for attention")
    p.add_argument("--eps-relative", action="store_const", const=True,
                   help="eps is a multiple of the median retain importance")
    p.add_argument("--skip-top-tokens", type=int, help="the skip metrics ignore this many most frequent "
                   f"tokens (default {d.skip_top_tokens})")
    p.add_argument("--seed", type=int, help=f"seed for splits, masking and the random scorer (default {d.seed})")
    p.add_argument("--batch-size", type=int, help="chunks per batch (default: automatic)")
    p.add_argument("--no-compile", dest="compile", action="store_const", const=False,
                   help="no torch.compile of the statistics and the evaluation's rank counts (compiling "
                   "costs ~30 s once; on CPU it then saves ~25%% of each scoring pass and ~10%% of each "
                   "evaluation pass)")
    p.add_argument("--dtype", help="auto (bf16 where native), float32, bfloat16 or float16")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--device-map", help="auto: shard a model too large for one device (accelerate)")
    p.add_argument("--trust-remote-code", action="store_const", const=True,
                   help="allow model code from the hub (off by default)")
    p.add_argument("--save-model", action="store_const", const=True,
                   help="save the pruned model (Hugging Face format) in RUN/model")
    p.add_argument("--name", help="run name (default: from datasets, group and scorer)")
    p.add_argument("--output", "-o", help="run folder (default runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no console output")


def config_from_args(args) -> RunConfig:
    """defaults < preset < --config file < flags; with --resume, the run folder's config is the base."""
    config = preset(args.preset) if args.preset else RunConfig()
    if args.config:
        config = RunConfig.from_toml(args.config, config)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
             if getattr(args, f.name, None) is not None}
    if args.resume:
        folder = flags.get("output") or str(RunConfig.from_dict(flags, config).output_dir)
        saved = os.path.join(folder, "config.toml")
        if os.path.isfile(saved):
            config = RunConfig.from_toml(saved)
    return RunConfig.from_dict(flags, config)


def cmd_run(args) -> None:
    from .allocator import keep_freed_memory
    from .run import run

    keep_freed_memory()
    run(config_from_args(args), resume=args.resume, quiet=args.quiet)


def cmd_report(args) -> None:
    from .report import write_report

    out = args.output or args.runs[0]
    print(write_report(args.runs, out))


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
    parser = argparse.ArgumentParser(prog="selprune", description="Machine unlearning by selective pruning.")
    parser.add_argument("--version", action="version", version=f"selprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    rep = sub.add_parser("report", help="HTML report and plots of one or more runs (overlaid)")
    rep.add_argument("runs", nargs="+", help="run folders")
    rep.add_argument("--output", "-o", help="where to write the report (default: the first run folder)")
    lst = sub.add_parser("list", help="list built-in models, supported architectures or built-in datasets")
    lst.add_argument("what", choices=["models", "architectures", "datasets"])
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "report": cmd_report, "list": cmd_list}[args.command]
    try:
        handler(args)
    except UserError as exc:
        print(f"selprune: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("selprune: interrupted; finished steps are saved (continue with --resume)", file=sys.stderr)
        return 130
    except MemoryError:
        print("selprune: error: out of memory: use a smaller --batch-size or --chunk-len, or --dtype bfloat16",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
