"""``prefixtune compare``: several methods on one task with the same data, budget, seeds and
evaluation, plus sweeps and low-data curves, and a report with tables and plots."""

from prefixtune.compare.config import CompareConfig, RunSpec
from prefixtune.compare.report import build_report, write_report
from prefixtune.compare.runner import CompareError, run_comparison

__all__ = ["CompareConfig", "CompareError", "RunSpec", "build_report", "run_comparison", "write_report"]
