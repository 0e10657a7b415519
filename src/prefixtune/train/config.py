"""``TrainConfig``: everything a run needs; saved as ``config.json`` in the run directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefixtune.core.config import ConfigError
from prefixtune.data.builtins import BUILTINS
from prefixtune.data.errors import DataError
from prefixtune.data.sources import describe
from prefixtune.data.spec import TaskSpec
from prefixtune.train.methods import train_method
from prefixtune.extras import require



@dataclass
class TrainConfig:
    """A training run.

    Fields:
        model: bundled name, local path or hub id of the base model.
        task: built-in task (``e2e``, ``sst2``, ``rte``) or a name for a custom one.
        data: a data file, directory, save_to_disk directory or hub name owner/name[:config][@revision]
            (for a custom task, or instead of a built-in's data; docs/training.md#data); in Python
            also a ``datasets.Dataset``/``DatasetDict`` (config.json then only describes it).
        input_column, target_column, label_column, template: custom task columns (dotted paths
            reach nested fields: ``answers.text``, ``refs.0``); ``template`` formats the input
            (default ``"{<input_column>}\\n"`` for generation). A list-valued target trains on its
            first element and scores against all of them.
        references_column: generation: a column listing all references of the row's input
            (multi-reference test sets with one row per input).
        method: one of :data:`prefixtune.train.methods.TRAIN_METHODS`: ``prefix``, ``prompt``
            (P-tuning with ``encoder``), ``ptuning_v2``, or the comparison baselines ``lora``
            (PEFT) and ``full`` (full fine-tuning).
        adapter: the method config's fields (e.g. ``{"prefix_length": 10}``).
        steps: optimizer steps (the learning-rate schedule spans them).
        max_seconds: wall-clock budget for the training steps (evaluation and checkpoints not
            counted); the run ends after the step that reaches it. None = no budget.
        batch_size: examples per step (across processes and accumulation).
        grad_accum: micro-batches per step.
        lr, weight_decay, warmup_ratio, max_grad_norm: AdamW, linear warmup then linear decay, clipping.
        bf16: run the forward under bf16 autocast.
        gradient_checkpointing: recompute layers in backward.
        max_length: longest tokenized example (longer ones are truncated and counted).
        train_limit, eval_limit: use only the first N training records / evaluation inputs.
        train_sample_seed: with ``train_limit``, a random subset of that size drawn with this seed
            instead of the first records (low-data experiments).
        eval_every: evaluate (loss and task metric) every N steps; 0 = only at the end.
        save_every: write a resumable checkpoint every N steps.
        patience: stop after this many evaluations without improvement (None = never).
        eval_split: split used for evaluation during training.
        test_split, test_limit: after training, ``prefixtune train`` scores the best adapter on this
            split (first ``test_limit`` inputs; None = all) and writes its scores and predictions.
        max_new_tokens, num_beams, stop: decoding for generation metrics.
        seed: seeds data order, init and dropout.
        out: the run directory.
    """

    model: str = "smollm2-135m"
    task: str = "e2e"
    data: str | Any | None = None
    input_column: str | None = None
    target_column: str | None = None
    label_column: str | None = None
    template: str | None = None
    references_column: str | None = None
    method: str = "prefix"
    adapter: dict[str, Any] = field(default_factory=dict)
    steps: int = 300
    max_seconds: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    max_length: int = 160
    train_limit: int | None = None
    train_sample_seed: int | None = None
    eval_limit: int | None = 100
    eval_every: int = 100
    save_every: int = 50
    patience: int | None = None
    eval_split: str = "dev"
    test_split: str | None = None
    test_limit: int | None = None
    max_new_tokens: int = 60
    num_beams: int = 1
    stop: list[str] = field(default_factory=lambda: ["\n"])
    seed: int = 0
    out: str = "runs/run"

    def __post_init__(self) -> None:
        train_method(self.method)  # a known method, or a ConfigError listing them
        for name in ("steps", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (an in-memory ``data`` set becomes its description)."""
        values = dataclasses.asdict(dataclasses.replace(self, data=None))  # asdict would deep-copy a data set
        values["data"] = describe(self.data)
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"unknown training options {extra}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_mapping(path))


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file holding a mapping of options."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        yaml = require("yaml", "train", "YAML config reading")

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options")
    return data


def task_spec(cfg: TrainConfig) -> TaskSpec:
    """The built-in task, or one described by the config's columns."""
    if cfg.task in BUILTINS and not (cfg.input_column or cfg.label_column or cfg.target_column
                                     or cfg.references_column):
        return BUILTINS[cfg.task]
    if cfg.label_column:
        template = cfg.template or "{" + (cfg.input_column or "text") + "}"
        cols = () if cfg.template else (cfg.input_column or "text",)
        return TaskSpec(cfg.task, "classification", template=template, label_column=cfg.label_column, text_columns=cols)
    if not (cfg.input_column or cfg.template) or not cfg.target_column:
        raise DataError(f"task {cfg.task!r} is not built in: give --input-column (or --template) and "
                        "--target-column for generation, or --label-column for classification")
    template = cfg.template or "{" + cfg.input_column + "}\n"
    return TaskSpec(cfg.task, "generation", template=template, target_column=cfg.target_column,
                    references_column=cfg.references_column)
