"""PNG plots of a run's curves: training loss, evaluation loss and the task metric."""

from __future__ import annotations

import json
from pathlib import Path

from prefixtune.extras import require


def plot_run(metrics_file: Path, out: Path, metric: str) -> list[Path]:
    """Write ``loss.png`` and ``<metric>.png`` from ``metrics.jsonl``; returns the files written."""
    matplotlib = require("matplotlib", "train", "plotting")

    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "train", "plotting")

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    evals = [r for r in rows if "split" in r]
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
