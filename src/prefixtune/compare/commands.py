"""The ``compare`` subcommand (argument parsing lives in ``prefixtune.cli``)."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from prefixtune.cli.logs import without_logging_options
from prefixtune.compare.config import CompareConfig
from prefixtune.compare.report import write_report
from prefixtune.compare.runner import is_finished, run_comparison


def run_compare(args: Any, argv: list[str] | None = None) -> int:
    """Returns the exit code: 0 if every run finished, 1 if some failed."""
    cfg = CompareConfig.load(args.config)
    if args.out:
        cfg.out = args.out
    specs = cfg.runs()
    if args.dry_run:
        for s in specs:
            print(f"{'finished' if is_finished(s) else 'to run  '}  {s.name}  ({s.config.method}, lr {s.config.lr if s.config.lr == 'auto' else f'{s.config.lr:g}'}, "
                  f"{s.config.steps} steps{f', {s.config.train_limit} records' if s.config.train_limit else ''})")
        print(f"{len(specs)} runs, {sum(map(is_finished, specs))} finished")
        return 0
    failed = []
    if not args.report_only:
        statuses = run_comparison(cfg, only=args.only)
        failed = [s for s in statuses if s["status"] == "failed"]
    command = "prefixtune " + shlex.join(without_logging_options(argv if argv is not None else sys.argv[1:]))
    report = write_report(cfg, publish=args.publish, command=command)
    print(report.read_text())
    print(f"report: {report}")
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f["name"] for f in failed), file=sys.stderr)
        return 1
    return 0

