"""PNG plots of a run's curves: training loss, evaluation loss and the task metric."""

from __future__ import annotations

from pathlib import Path

from prefixtune.extras import require
from prefixtune.train.rundir import read_metrics


def plot_run(metrics_file: Path, out: Path, metric: str) -> list[Path]:
    """Write ``loss.png`` and ``<metric>.png`` from ``metrics.jsonl``; returns the files written."""
    matplotlib = require("matplotlib", "train", "plotting")

    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "train", "plotting")

    rows = read_metrics(metrics_file)
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    evals = [r for r in rows if "split" in r and r.get("loss") is not None]
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.7)
    if evals:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label=f"{evals[0]['split']} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
    written.append(out / "loss.png")
    if evals and metric in evals[0]:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-")
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        fig.tight_layout()
        fig.savefig(out / f"{metric}.png", dpi=100)
        plt.close(fig)
        written.append(out / f"{metric}.png")
    return written
