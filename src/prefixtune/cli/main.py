"""The ``prefixtune`` command line: params, train, eval, generate, compare, serve."""

from __future__ import annotations

import argparse
import sys

from prefixtune.cli.logs import LEVEL_FLAGS, LEVEL_OPTION, LEVELS, configure_logging
from prefixtune.cli.options import Parser, UsageError, bounded
from prefixtune.train.guard import DivergedError


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixtune`` with ``argv`` (default: the command line's); returns the exit status: 0
    (also after ``--help``), 2 after a command line that does not parse, a bad value or a missing
    file, 1 after a training run that diverged; each printed as one line ``prefixtune: error: ...``."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = parse_args(argv)
        configure_logging(getattr(args, "log_level", "info"))
        return _run(args, argv)
    except UsageError as e:
        print(f"prefixtune: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:  # the last: an optional package, named
        print(f"prefixtune: error: {e}", file=sys.stderr)
        return 2
    except DivergedError as e:  # the options were valid, the run failed: exit 1
        print(f"prefixtune: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed (a :class:`UsageError` if it does not parse); nothing runs."""
    return _parser(argv).parse_args(argv)


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser with one subcommand each for params, serve, train, eval, generate and compare
    (``argv``'s ``--method`` picks the method whose options ``train --help`` and ``params --help`` list)."""
    from prefixtune.cli.train import add_params_parser, add_train_parser, chosen_method

    parser = Parser(prog="prefixtune", description="Prefix tuning for Hugging Face transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    method = chosen_method(argv, "prefix")
    add_params_parser(sub, method)
    _add_serve_parser(sub)
    add_train_parser(sub, method)
    _add_eval_parser(sub)
    _add_generate_parser(sub)
    _add_compare_parser(sub)
    for command_parser in (parser, *sub.choices.values()):  # before or after the subcommand
        _add_logging_options(command_parser)
    return parser


def _add_logging_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, ``-v`` (debug) and ``-q`` (warning); the default is info (see :mod:`prefixtune.cli.logs`)."""
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument(LEVEL_OPTION, choices=LEVELS, default=argparse.SUPPRESS,
                        help="progress messages on stderr from this level up (default: info; "
                             "the processes other than the main one log warnings and errors only)")
    for names, level in LEVEL_FLAGS.items():
        levels.add_argument(*names, dest="log_level", action="store_const", const=level, default=argparse.SUPPRESS,
                            help=f"the same as {LEVEL_OPTION} {level}"
                                 + (" (no progress bar either)" if level == "warning" else ""))


#: an argparse type for counts: an int >= 1
COUNT = bounded(int, 1, name="int")


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve the base model and adapters over an OpenAI-compatible HTTP API",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           epilog="max_tokens defaults: 16 for /v1/completions (OpenAI's legacy default); "
                                  "for /v1/chat/completions the --max-tokens limit (until EOS or the limit).")
    serve.add_argument("--model", default="smollm2-135m", help="bundled name, local path or hub id")
    serve.add_argument("--dtype", choices=["float32", "bfloat16", "auto"], default="float32",
                       help="the base model's weights and activations (bfloat16: half the memory, the hardware's "
                            "bf16 matmuls; adapters are cast where they join attention, softmax stays fp32; auto: "
                            "bfloat16 only where a bf16 matmul measures faster than float32 here)")
    serve.add_argument("--served-model-name", default=None, metavar="NAME",
                       help="the base model's id in the API (default: the last component of --model's path, "
                            "or the bundled name / hub id)")
    serve.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                       help="an adapter to serve under NAME (repeatable)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=bounded(int, 1, name="int", high=65535), default=8000, help="1-65535")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (None: open)")
    serve.add_argument("--admin-key", default=None, help="enables POST/DELETE /admin/adapters with this key")
    serve.add_argument("--batching", default="continuous", choices=("continuous", "mixed", "same", "none"),
                       help="continuous batching across adapters (requests join and leave at every step), or "
                            "the older micro-batching: across adapters, only of one adapter, or not at all")
    serve.add_argument("--max-batch-size", type=COUNT, default=32, help="rows decoded together")
    serve.add_argument("--max-batch-tokens", type=COUNT, default=512,
                       help="tokens per step of continuous batching (decoding rows + a chunk of new prompts)")
    serve.add_argument("--compile", action="store_true",
                       help="decode under torch.compile (continuous batching only; the first steps of each shape "
                            "compile; eager again if compiling fails). Measured on CPU, speed and bf16 token "
                            "agreement: docs/serving.md")
    serve.add_argument("--batch-wait-ms", type=bounded(float, 0, name="float"), default=5.0)
    serve.add_argument("--max-queue", type=COUNT, default=256, help="waiting requests before answering 429")
    serve.add_argument("--max-prompt-tokens", type=COUNT, default=2048)
    serve.add_argument("--max-tokens", type=COUNT, default=512,
                       help="largest max_tokens a request may ask for (and a chat's default)")
    serve.add_argument("--max-body-bytes", type=COUNT, default=1 << 20,
                       help="largest request body; larger ones get 413")


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="score a trained adapter on a split and write its predictions",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("--run", required=True, help="the run directory")
    ev.add_argument("--split", default="test")
    ev.add_argument("--limit", type=COUNT, default=None, help="first N inputs only")
    ev.add_argument("--adapter", default="best", choices=("best", "adapter"), help="best or final adapter")
    ev.add_argument("--num-beams", type=COUNT, default=None, help="beam search width (default: the run's)")
    ev.add_argument("--no-repeat-ngram", type=bounded(int, 0, name="int"), default=None, metavar="N",
                    help="never generate an N-token n-gram twice in one output; 0: no guard (default: the run's)")
    ev.add_argument("--show", type=bounded(int, 0, name="int"), default=3, help="print this many predictions")
    _add_device_option(ev)
    ev.add_argument("--no-loss", action="store_true",
                    help="generation tasks: skip the loss over every input-reference pair (faster)")


def _add_generate_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate with a trained adapter (a classification run: print each "
                                          "input's predicted label)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("--run", required=True)
    gen.add_argument("--input", action="append", required=True,
                     help="input text (repeatable; \\n for newline; a sentence pair for a pair task: the two "
                          "texts split by \\t)")
    gen.add_argument("--adapter", default="best", choices=("best", "adapter"))
    gen.add_argument("--max-new-tokens", type=COUNT, default=60)
    gen.add_argument("--num-beams", type=COUNT, default=1)
    gen.add_argument("--no-repeat-ngram", type=bounded(int, 0, name="int"), default=0, metavar="N",
                     help="never generate an N-token n-gram twice in one output (0: no guard)")
    gen.add_argument("--temperature", type=bounded(float, 0, name="float"), default=0.0, help="0 (or below 1e-5) = greedy")
    gen.add_argument("--stop", action="append", default=None)
    _add_device_option(gen)


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model runs (auto: CUDA where there is a GPU, else the CPU)")


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser("compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         help="run several methods on one task (same data, budget, seeds) and report",
                         description="Train every run of a comparison file (methods x seeds, an optional sweep, an "
                                     "optional low-data curve), each in its own process; finished runs are skipped "
                                     "and an interrupted one resumes. Then write report.md, report.json and plots.")
    cmp.add_argument("--config", required=True, help="comparison file (YAML/JSON; see prefixtune.compare.config)")
    cmp.add_argument("--out", default=None, help="override the comparison's output directory")
    cmp.add_argument("--only", default=None, help="run only the runs whose name contains this text")
    cmp.add_argument("--dry-run", action="store_true", help="list the runs and whether they are finished; train nothing")
    cmp.add_argument("--report-only", action="store_true", help="write the report from the finished runs; train nothing")
    cmp.add_argument("--publish", default=None, metavar="MARKDOWN",
                     help="also put the report into this markdown page (its section for this comparison), "
                          "with the plots in a folder named after the page")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the parsed subcommand; returns the exit status (compare's own, 0 for the others)."""
    if args.command == "params":
        from prefixtune.bundled.models import load_model
        from prefixtune.cli.train import params_config
        from prefixtune.methods.params import count_parameters

        cfg = params_config(args)
        model, _ = load_model(args.model, task=args.task)
        print(count_parameters(model, cfg))
    elif args.command == "train":
        from prefixtune.cli.train import config_yaml, train_config

        cfg = train_config(args)
        if args.print_config:
            print(config_yaml(cfg), end="")
            return 0
        from prefixtune.train.commands import run_train

        run_train(cfg, resume=not args.no_resume)
    elif args.command == "eval":
        from prefixtune.train.commands import run_eval

        run_eval(args)
    elif args.command == "generate":
        from prefixtune.train.commands import run_generate

        run_generate(args)
    elif args.command == "compare":
        from prefixtune.compare.commands import run_compare

        return run_compare(args, argv)
    elif args.command == "serve":
        from prefixtune.serve.main import serve_from_args

        serve_from_args(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
