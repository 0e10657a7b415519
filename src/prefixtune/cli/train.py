"""``prefixtune train`` and ``prefixtune params``: options generated from :class:`TrainConfig` and
the method configs (:mod:`prefixtune.cli.options`), and the config they resolve to."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from prefixtune.cli.options import HelpFormatter, Parser, UsageError, describe_options, flags_parser, parse_set
from prefixtune.core.config import ConfigError, Option, config_options, unknown_option
from prefixtune.extras import require
from prefixtune.methods import REGISTRY
from prefixtune.methods.prefix import PrefixConfig
from prefixtune.train.config import TrainConfig, read_mapping
from prefixtune.train.methods import TRAIN_METHODS, train_method

#: TrainConfig's fields that are flags of their own (``adapter`` is ``--set``, ``stop`` a repeatable flag)
TRAIN_FLAGS: dict[str, Option] = {name: opt for name, opt in config_options(TrainConfig).items()
                                  if name not in ("adapter", "stop")}
SET_HELP = "a method option (repeatable), e.g. --set prefix_length=20; the chosen method's keys are listed below"


def chosen_method(argv: list[str], default: str) -> str:
    """The method of a command line not yet parsed, whose ``--set`` keys ``--help`` lists: its
    ``--method``, else its ``--config`` file's, else ``default`` (also for an unknown one)."""
    pre = Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--method")
    pre.add_argument("--config")
    try:
        known = pre.parse_known_args(argv)[0]
        method = known.method or (read_mapping(known.config).get("method") if known.config else None)
    except (UsageError, ConfigError, OSError):  # the real parser or train_config reports it
        return default
    return method if method in TRAIN_METHODS else default


def set_listing(method: str, command: str) -> str:
    """The ``--set`` keys of ``method``, for the epilog of ``prefixtune <command> --help``."""
    m = train_method(method)
    return describe_options(m.config.options(), f"--set KEY=VALUE options of --method {method} ({m.summary}); "
                                                f"'prefixtune {command} --method NAME --help' lists another's.")


def add_train_parser(sub: Any, method: str) -> None:
    """The ``train`` subcommand: a flag for every TrainConfig field, ``--set`` for the adapter."""
    head = Parser(add_help=False)
    head.add_argument("--config", help="YAML or JSON file of options (e.g. a run's config.json); the options "
                                       "given on the command line override it")
    head.add_argument("--print-config", action="store_true",
                      help="print the resolved config as YAML (loadable with --config) and exit; trains nothing")
    summaries = "; ".join(f"{m.name}: {m.summary}" for m in TRAIN_METHODS.values())
    train = sub.add_parser(
        "train", parents=[head, flags_parser(TRAIN_FLAGS, {"method": summaries})], formatter_class=HelpFormatter,
        help="train an adapter on a task; resumes a run directory's last checkpoint",
        description=textwrap.fill("Train an adapter. Every option is a TrainConfig field; a run directory's "
                                  "config.json holds them all, so 'prefixtune train --config RUN/config.json' "
                                  "reproduces the run.", 100),
        epilog=set_listing(method, "train"))
    stop = config_options(TrainConfig)["stop"]
    train.add_argument("--stop", action="append", default=argparse.SUPPRESS, metavar="TEXT",
                       help=f"{stop.help} (repeatable; default: {stop.default!r})")
    train.add_argument("--set", dest="set_options", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    train.add_argument("--no-resume", action="store_true", help="start over even if the run directory has checkpoints")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The config file's values, then every option given on the command line (``--set`` options
    are added to the file's ``adapter``), checked as a whole."""
    values: dict[str, Any] = TrainConfig.load(args.config).to_dict() if args.config else {}
    values.update({name: getattr(args, name) for name in [*TRAIN_FLAGS, "stop"] if hasattr(args, name)})
    method = values.get("method", TRAIN_FLAGS["method"].default)
    options = train_method(method).config.options()
    values["adapter"] = {**values.get("adapter", {}), **parse_set(args.set_options, options, f"method {method}")}
    return TrainConfig.from_dict(values)


def config_yaml(cfg: TrainConfig) -> str:
    """The full config as YAML, which ``--config`` reads back to the same config."""
    yaml = require("yaml", "train", "--print-config")
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def add_params_parser(sub: Any, method: str) -> None:
    """The ``params`` subcommand: PrefixConfig's fields as flags, ``--set`` for any method's options."""
    head = Parser(add_help=False)
    head.add_argument("--model", default="smollm2-135m", help="bundled name, local path or hub id")
    head.add_argument("--task", default="causal-lm", help="causal-lm, masked-lm, seq2seq-lm or base")
    head.add_argument("--method", default="prefix", choices=list(REGISTRY),
                      help="; ".join(f"{m.name}: {m.summary}" for m in REGISTRY.values()))
    head.add_argument("--set", dest="set_options", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    sub.add_parser("params", parents=[head, flags_parser(PrefixConfig.options())], formatter_class=HelpFormatter,
                   help="trainable and stored parameters for a model and an adapter config",
                   description=textwrap.fill("Parameter counts of an adapter on a model. The prefix options "
                                             "are flags too; they apply to any method that has them "
                                             "(ptuning_v2's prefix), whose own defaults are listed below.", 100),
                   epilog=set_listing(method if method in REGISTRY else "prefix", "params"))


def params_config(args: argparse.Namespace) -> Any:
    """The method config of ``prefixtune params``: its flags, then its ``--set`` options."""
    config_cls = REGISTRY[args.method].config
    options = config_cls.options()
    given = {name: getattr(args, name) for name in PrefixConfig.options() if hasattr(args, name)}
    for name in given:
        if name not in options:
            raise unknown_option(name, list(options), f"--{name.replace('_', '-')}: method {args.method}")
    return config_cls(**{**given, **parse_set(args.set_options, options, f"method {args.method}")})
