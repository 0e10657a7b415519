"""The comparison report: tables (markdown) and plots (PNG) from the runs' own result files."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from prefixtune.train.config import task_spec
from prefixtune.train import precision
from prefixtune.train.rundir import read_metrics, saved_options
from prefixtune.compare.bootstrap import BootstrapError, paired_interval, read_records
from prefixtune.compare.config import CompareConfig, RunSpec, sweep_keys
from prefixtune.compare.runner import is_finished, run_dir
from prefixtune.extras import require

GENERATION_EXTRA = ("nist", "rouge_l", "cider", "meteor")
CLASSIFICATION_EXTRA = ("f1",)


def collect(spec: RunSpec) -> dict[str, Any] | None:
    """One finished run's numbers, or None if it has not finished."""
    if not is_finished(spec):
        return None
    d = run_dir(spec)
    result = json.loads((d / "result.json").read_text())
    split = spec.config.test_split or spec.config.eval_split
    scores = json.loads((d / f"scores-{split}.json").read_text()) if spec.config.test_split else result["scores"]
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in read_metrics(d / "metrics.jsonl"):
        if "train_loss" in r:
            if r["train_loss"] is not None:
                curves["train_loss"].append((r["step"], r["train_loss"]))
        elif "split" in r:
            for k, v in r.items():
                if isinstance(v, (int, float)) and k != "step":
                    curves[f"eval_{k}"].append((r["step"], v))
    seconds = result.get("train_seconds") or float("nan")
    return {"name": spec.name, "group": spec.group, "part": spec.part, "method": spec.method, "labels": spec.labels,
            "split": split,
            "lr": result.get("lr", spec.config.lr), "lr_auto": spec.config.lr == "auto", "adapter": spec.config.adapter,
            "precision": _precision(spec.config.method, _bf16_of(d, result)),
            "bf16_auto": (saved_options(d) or {}).get("bf16") == "auto",
            "scores": {k: v for k, v in scores.items() if isinstance(v, (int, float))},
            "parameters": result["parameters"], "train_seconds": seconds, "steps": result.get("steps_done"),
            "tokens_per_s": (result.get("train_tokens") or 0) / seconds if seconds == seconds and seconds else None,
            "peak_memory_mib": result.get("peak_memory_mib"), "curves": dict(curves),
            "predictions": str(d / f"predictions-{split}.jsonl")}


def _rates(rs: list[dict[str, Any]]) -> str:
    """The peak rates of a method's runs (one per seed where ``lr: auto`` chose differently), marked
    ``(auto)`` where the search chose them."""
    rates = "/".join(f"{lr:g}" if isinstance(lr, (int, float)) else str(lr) for lr in sorted(
        {r["lr"] for r in rs}, key=lambda lr: (not isinstance(lr, (int, float)), lr if isinstance(lr, (int, float)) else 0)))
    return rates + (" (auto)" if any(r.get("lr_auto") for r in rs) else "")


def _bf16_of(d: Path, result: dict[str, Any]) -> bool | None:
    """Whether the run in ``d`` computed in bf16: its ``result.json``, ``precision.json`` or (a run
    from before either recorded it) its own ``config.json``'s explicit setting; None if unknown."""
    if "bf16" in result:
        return bool(result["bf16"])
    made = precision.recorded(d)
    if made is not None:
        return made
    saved = (saved_options(d) or {}).get("bf16", False)
    return None if saved == "auto" else bool(saved)


def _precision(method: str, bf16: bool | None) -> str:
    """:func:`prefixtune.train.precision.label`, or ``?`` where the run's precision is unknown."""
    return "?" if bf16 is None else precision.label(method, bf16)


def _precisions(rs: list[dict[str, Any]]) -> str:
    """A method's precisions over its runs, marked ``(auto)`` where ``bf16: auto`` chose them on the machine."""
    return "/".join(sorted({r["precision"] for r in rs})) + (" (auto)" if any(r["bf16_auto"] for r in rs) else "")


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def _fmt(mean: float, sd: float, n: int) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {sd:.2f}"


_BUDGET_KEYS = ("steps", "max_seconds", "batch_size", "test_limit", "eval_limit", "eval_every", "save_every")


def _budget(c: Any) -> str:
    """The training budget and scoring of one run's TrainConfig, in words."""
    steps = f"{c.steps} optimizer steps{f' or {c.max_seconds:g} s' if c.max_seconds else ''} of batch {c.batch_size}"
    split = c.test_split or c.eval_split
    limit = c.test_limit if c.test_split else c.eval_limit
    return f"{steps}, scored on {f'the first {limit}' if limit else 'all'} {split} inputs"


def _metric(kind: str) -> str:
    return "bleu" if kind == "generation" else "accuracy"


def _group(rows: list[dict[str, Any]], key: Any) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return out


def build_report(cfg: CompareConfig, plots_dir: Path, image_prefix: str = "") -> tuple[str, dict[str, Any]]:
    """``(markdown, data)``; plots are written to ``plots_dir`` and linked as ``image_prefix + file``."""
    specs = cfg.runs()
    rows = [r for r in (collect(s) for s in specs) if r is not None]
    kind = task_spec(specs[0].config).kind
    metric = _metric(kind)
    extra = [k for k in (GENERATION_EXTRA if kind == "generation" else CLASSIFICATION_EXTRA)
             if any(k in r["scores"] for r in rows)]  # e.g. METEOR only where WordNet is installed
    base = specs[0].config
    split = rows[0]["split"] if rows else (base.test_split or base.eval_split)
    L = _intro(cfg.name, base, len(rows), len(specs), split, metric)
    data: dict[str, Any] = {"metric": metric, "split": split, "runs": rows}

    methods = [r for r in rows if r["group"] == "methods"]
    if methods:
        section, data["methods"] = _methods_section(cfg.name, methods, extra, metric, plots_dir, image_prefix)
        L += section
    if methods and cfg.contrasts:
        section, data["contrasts"] = _contrasts_section(cfg, methods, kind, metric)
        L += section

    by_sweep = _group([r for r in rows if r["group"] == "sweep"], lambda r: r["part"])
    for sw in cfg.sweeps():
        sweep = by_sweep.get(sw["name"])
        if not sweep:
            continue
        section, points = _sweep_section(cfg.name, specs, sw, sweep, metric, plots_dir, image_prefix)
        L += section
        data.setdefault("sweeps", {})[sw["name"]] = points

    low = [r for r in rows if r["group"] == "low_data"]
    if low:
        section, data["low_data"] = _low_data_section(cfg, specs, low, metric, plots_dir, image_prefix)
        L += section
    return "\n".join(L).rstrip() + "\n", data


def _intro(name: str, base: Any, finished: int, total: int, split: str, metric: str) -> list[str]:
    """The title and the paragraph on what was run and how it was scored; ``base`` is the first run's TrainConfig."""
    limit = base.test_limit if base.test_split else base.eval_limit
    L = [f"## {name} — task {base.task}, model {base.model}", ""]
    L.append(f"{finished} of {total} runs finished. Scores on the **{split}** split"
             f"{f' (first {limit} inputs)' if limit else ''}; {metric} is the task metric. Every method run: "
             f"{base.steps} optimizer steps{f' or {base.max_seconds:g} s' if base.max_seconds else ''}, batch "
             f"{base.batch_size}, max length {base.max_length}, linear warm-up {base.warmup_ratio:.0%} then decay, "
             "the same data order for the same seed (sweeps and the low-data curve state their own budget). Time is "
             "the wall clock of the training steps; memory is the run's peak resident memory (CPU) or allocator "
             "peak (CUDA).")
    L.append("")
    return L


def _methods_section(name: str, methods: list[dict[str, Any]], extra: list[str], metric: str, plots_dir: Path,
                     image_prefix: str) -> tuple[list[str], dict[str, Any]]:
    """The methods table (mean ± sd over seeds per method) and its two plots: ``(lines, summary by method)``."""
    extra = [k for k in extra if any(k in r["scores"] for r in methods)]  # columns this table has
    L = [f"| method | lr | precision | {metric} | " + " | ".join(extra) + " | trainable params | % of base | stored params "
         "| train time (s) | peak memory (MiB) | tokens/s | seeds |",
         "|---|---:|---|" + "---:|" * (len(extra) + 8)]
    by_method = _group(methods, lambda r: r["method"])
    summary = {}
    for method, rs in by_method.items():
        m, sd = _mean_sd([r["scores"].get(metric) for r in rs])
        p = rs[0]["parameters"]
        ex = [_mean_sd([r["scores"].get(k) for r in rs]) for k in extra]
        t = _mean_sd([r["train_seconds"] for r in rs])[0]
        mem = _mean_sd([r["peak_memory_mib"] for r in rs])[0]
        tps = _mean_sd([r["tokens_per_s"] for r in rs])[0]
        summary[method] = {"mean": m, "sd": sd, "n": len(rs), "trainable": p["trainable"], "stored": p["stored"]}
        L.append(f"| {method} | {_rates(rs)} | {_precisions(rs)} | **{_fmt(m, sd, len(rs))}** | "
                 + " | ".join(_fmt(a, b, len(rs)) for a, b in ex)
                 + f" | {p['trainable']:,} | {100 * p['trainable'] / p['base']:.3f}% | {p['stored']:,} | {t:.0f} "
                 f"| {mem:.0f} | {tps:.0f} | {len(rs)} |")
    L += ["", f"![{metric} vs trainable parameters]({image_prefix}{_plot_params(summary, metric, plots_dir, name)})",
          f"![learning curves]({image_prefix}{_plot_curves(by_method, metric, plots_dir, name)})", ""]
    return L, summary


def _contrasts_section(cfg: CompareConfig, methods: list[dict[str, Any]], kind: str,
                       metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The paired bootstrap table, one row per contrast ``a - b``: ``(lines, intervals)``."""
    by_method = _group(methods, lambda r: r["method"])
    L = ["### Paired bootstrap: differences between methods", "",
         f"Each row: the {metric} of A minus that of B (each the mean over its seeds, on every scored input), and "
         f"the 95% interval of that difference over {cfg.bootstrap_samples:,} paired resamples of the scored inputs "
         "(the same draw for both methods and all seeds; corpus metric recomputed on each draw). It says how much "
         "the difference depends on which inputs the test set holds; the seeds' spread is the table's ± sd.", "",
         f"| A − B | difference ({metric}) | 95% interval | draws with A ahead | inputs | seeds (A, B) |",
         "|---|---:|---:|---:|---:|---:|"]
    out = []
    for a, b in cfg.contrasts:
        records = {m: [read_records(Path(r["predictions"])) for r in by_method.get(m, [])
                       if Path(r["predictions"]).is_file()] for m in (a, b)}
        try:
            iv = paired_interval(a, records[a], b, records[b], kind, cfg.bootstrap_samples)
        except BootstrapError as e:
            L.append(f"| {a} − {b} | — | — | — | — | {e} |")
            continue
        out.append(iv.to_dict())
        L.append(f"| {a} − {b} | **{iv.difference:+.2f}** | [{iv.low:+.2f}, {iv.high:+.2f}] | "
                 f"{100 * iv.share_a_better:.1f}% | {iv.inputs} | {iv.seeds[0]}, {iv.seeds[1]} |")
    return L + [""], out


def _sweep_section(name: str, specs: list[RunSpec], sw: dict[str, Any], sweep: list[dict[str, Any]], metric: str,
                   plots_dir: Path, image_prefix: str) -> tuple[list[str], list[dict[str, Any]]]:
    """One sweep's table (the best point in bold) and plot: ``(lines, points)``."""
    keys = sweep_keys(sw["grid"])
    first = next(s for s in specs if s.group == "sweep" and s.part == sw["name"]).config
    fixed = ", ".join(f"{k} = {v}" for k, v in sw["grid"].items() if k not in keys and k not in _BUDGET_KEYS)
    title = sw["name"] if sw["name"] == sw["method"] else f"{sw['name']} (around {sw['method']})"
    L = [f"### Sweep: {title}", "",
         f"Each run: {_budget(first)}; the other options as in {sw['method']}"
         f"{f', except {fixed}' if fixed else ''}.", "",
         "| " + " | ".join(keys) + f" | {metric} | trainable params | train time (s) |",
         "|" + "---|" * len(keys) + "---:|---:|---:|"]
    points = _group(sweep, lambda r: tuple(r["labels"][k] for k in keys))
    table = []
    for point, rs in points.items():
        m, sd = _mean_sd([r["scores"].get(metric) for r in rs])
        table.append((point, m, sd, len(rs), rs[0]["parameters"]["trainable"],
                      _mean_sd([r["train_seconds"] for r in rs])[0]))
    best = max((t[1] for t in table if not math.isnan(t[1])), default=float("nan"))
    for point, m, sd, n, trainable, t in table:
        cell = _fmt(m, sd, n)
        L.append("| " + " | ".join(str(v) for v in point) + f" | {'**' + cell + '**' if m == best else cell} "
                 f"| {trainable:,} | {t:.0f} |")
    plot = _plot_sweep(table, keys, metric, plots_dir, f"{name}-sweep-{sw['name']}", title)
    L += ["", f"![sweep {title}]({image_prefix}{plot})", ""]
    return L, [{"point": dict(zip(keys, p)), "mean": m, "sd": sd, "n": n} for p, m, sd, n, _, _ in table]


def _low_data_section(cfg: CompareConfig, specs: list[RunSpec], low: list[dict[str, Any]], metric: str,
                      plots_dir: Path, image_prefix: str) -> tuple[list[str], dict[str, list[tuple]]]:
    """The low-data table (training-set size x method) and plot: ``(lines, curve by method)``."""
    methods_ld = cfg.low_data["methods"]
    sizes = cfg.low_data["sizes"]
    first = next(s for s in specs if s.group == "low_data").config
    L = ["### Low data: training-set size", "",
         "Each run trains on a random subset of that many training records (drawn with the run's seed), "
         f"{_budget(first)}; {metric} mean ± standard deviation over seeds.", "",
         "| training records | " + " | ".join(methods_ld) + " |", "|---:" + "|---:" * len(methods_ld) + "|"]
    cells = _group(low, lambda r: (r["method"], r["labels"]["size"]))
    curve: dict[str, list[tuple]] = {}
    for size in sizes:
        row = []
        for m in methods_ld:
            mean, sd = _mean_sd([r["scores"].get(metric) for r in cells.get((m, size), [])])
            n = len(cells.get((m, size), []))
            curve.setdefault(m, []).append((size, mean, sd, n))
            row.append(_fmt(mean, sd, n) + (f" (n={n})" if n else ""))
        L.append(f"| {size} | " + " | ".join(row) + " |")
    L += ["", f"![low data]({image_prefix}{_plot_low_data(curve, metric, plots_dir, cfg.name)})", ""]
    return L, curve


# ---------------------------------------------------------------------------------------- plots


def _figure():
    matplotlib = require("matplotlib", "train", "plotting")

    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "train", "plotting")

    return plt


def _save(fig: Any, where: Path, file: str) -> str:
    """Write ``fig`` as ``where/file`` and close it; returns ``file``."""
    plt = require("matplotlib.pyplot", "train", "plotting")

    fig.tight_layout()
    fig.savefig(where / file, dpi=110)
    plt.close(fig)
    return file


def _plot_params(summary: dict[str, Any], metric: str, where: Path, name: str) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, s in summary.items():
        ax.errorbar([s["trainable"]], [s["mean"]], yerr=[s["sd"]], fmt="o", capsize=3)
        ax.annotate(method, (s["trainable"], s["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"{name}: {metric} vs trainable parameters")
    ax.grid(True, alpha=0.3)
    return _save(fig, where, f"{name}-metric-vs-params.png")


def _log_axis_at(ax: Any, values: list[float]) -> None:
    """A log x axis with a labelled tick at each value that was run (not just at powers of ten)."""
    ax.set_xscale("log")
    ticks = sorted(set(values))
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()


def _smooth(points: list[tuple[int, float]], window: int = 10) -> tuple[list[int], list[float]]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    out = [statistics.fmean(ys[max(0, i - window + 1):i + 1]) for i in range(len(ys))]
    return xs, out


def _plot_curves(by_method: dict[str, list[dict[str, Any]]], metric: str, where: Path, name: str) -> str:
    plt = _figure()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for method, rs in by_method.items():
        r = rs[0]  # the first seed's run
        if r["curves"].get("train_loss"):
            a.plot(*_smooth(r["curves"]["train_loss"]), label=method)
        if r["curves"].get(f"eval_{metric}"):
            xs, ys = zip(*r["curves"][f"eval_{metric}"])
            b.plot(xs, ys, marker="o", label=method)
    a.set_xlabel("step")
    a.set_ylabel("training loss (moving average of 10 steps)")
    b.set_xlabel("step")
    b.set_ylabel(f"{metric} (evaluation split during training)")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{name}: learning curves (first seed)")
    return _save(fig, where, f"{name}-learning-curves.png")


def _plot_sweep(table: list[tuple], keys: list[str], metric: str, where: Path, file_stem: str, title: str) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = defaultdict(list)
    for point, m, sd, _, _, _ in table:
        lines[point[1:]].append((point[0], m, sd))
    numeric = all(isinstance(p[0], (int, float)) for p, *_ in table)
    for rest, pts in lines.items():
        pts.sort(key=lambda p: p[0] if numeric else str(p[0]))
        label = ", ".join(f"{k}={v}" for k, v in zip(keys[1:], rest)) or metric
        ax.errorbar([str(p[0]) if not numeric else p[0] for p in pts], [p[1] for p in pts],
                    yerr=[p[2] for p in pts], marker="o", capsize=3, label=label)
    if numeric and all(p[0] > 0 for p, *_ in table):
        _log_axis_at(ax, [p[0] for p, *_ in table])
    ax.set_xlabel(keys[0])
    ax.set_ylabel(metric)
    ax.set_title(f"sweep: {title}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, where, f"{file_stem}.png")


def _plot_low_data(curve: dict[str, list[tuple]], metric: str, where: Path, name: str) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, pts in curve.items():
        pts = [p for p in pts if not math.isnan(p[1])]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=method)
    _log_axis_at(ax, [p[0] for pts in curve.values() for p in pts])
    ax.set_xlabel("training records (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"{name}: low-data curve (mean ± sd over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, where, f"{name}-low-data.png")


# ---------------------------------------------------------------------------------------- output


def write_report(cfg: CompareConfig, publish: str | Path | None = None, command: str | None = None) -> Path:
    """Write ``<out>/report.md``, ``report.json`` and the plots; with ``publish``, also replace this
    comparison's section of that markdown file and copy the plots next to it."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    text, data = build_report(cfg, out)
    header = f"Command: `{command}`\n\n" if command else ""
    (out / "report.md").write_text(f"# Comparison: {cfg.name}\n\n{header}{text}")
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    if publish:
        doc = Path(publish)
        images = doc.parent / doc.stem
        images.mkdir(parents=True, exist_ok=True)
        text, _ = build_report(cfg, images, image_prefix=f"{images.name}/")
        from prefixtune.compare.markdown import replace_section

        replace_section(doc, f"compare-{cfg.name}", header + text, "# Comparison of methods")
    return out / "report.md"
