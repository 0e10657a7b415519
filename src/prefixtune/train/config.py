"""``TrainConfig``: everything a run needs; saved as ``config.json`` in the run directory."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefixtune.core.config import ConfigError, check_range, check_type, option, unknown_option
from prefixtune.data.builtins import BUILTINS
from prefixtune.data.errors import DataError
from prefixtune.data.sources import describe
from prefixtune.data.spec import TaskSpec
from prefixtune.extras import require
from prefixtune.train.methods import MethodName, train_method



#: the largest lr and weight decay taken: AdamW moves each weight by about lr per step, and lr or
#: lr x weight_decay past float32's range (3.4e38) would fail inside the optimizer
MAX_RATE = 1000.0
RATE_HINT = "a larger one can only diverge"


@dataclass
class TrainConfig:
    """A training run; saved as ``config.json`` in its run directory, which ``--config`` reads back.

    Each field's help is beside it; ``prefixtune train --help`` shows them with their defaults and
    choices (the options are generated from these fields). Values are checked against the field
    types and the adapter options against the method's config when the config is made, so a bad
    value is refused before anything loads.
    """

    model: str = option("smollm2-135m", "bundled name, local path or hub id of the base model")
    task: str = option("e2e", "built-in task (e2e, sst2, rte) or a name for a custom one")
    data: str | None = option(None, "a data file (csv, tsv, json, jsonl, parquet), a directory of split files, "
                                    "a save_to_disk directory or a hub name owner/name[:config][@revision], for a "
                                    "custom task or instead of a built-in's data (docs/training.md#data); in Python "
                                    "also a datasets.Dataset/DatasetDict")
    input_column: str | None = option(None, "custom task: the column holding the input text (a dotted path "
                                            "reaches a nested field: question.text)")
    target_column: str | None = option(None, "custom generation task: the column holding the target text (a list: "
                                             "trains on its first element, scores against all)")
    label_column: str | None = option(None, "custom classification task: the column holding the label")
    template: str | None = option(None, "custom task: formats the input from the columns, e.g. 'Summarize: {src}\\n' "
                                        "(default '{<input_column>}\\n' for generation)")
    references_column: str | None = option(None, "custom generation task: a column listing all references of the "
                                                 "row's input (multi-reference sets with one row per input)")
    method: MethodName = option("prefix", "prefix, prompt (P-tuning with encoder=mlp|lstm), ptuning_v2, or the "
                                          "comparison baselines lora (PEFT) and full (full fine-tuning)")
    adapter: dict[str, Any] = option(help="the method config's options, e.g. {prefix_length: 10} (--set KEY=VALUE)",
                                     factory=dict)
    steps: int = option(300, "optimizer steps (the learning-rate schedule spans them)")
    max_seconds: float | None = option(None, "wall-clock budget in seconds for the training steps (evaluation "
                                             "and checkpoints not counted); the run ends after the step that "
                                             "reaches it. None: no budget")
    batch_size: int = option(8, "examples per optimizer step (across processes and accumulation)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float | Literal["auto"] = option("auto", "peak learning rate of AdamW (linear warmup, then linear decay); "
                                                 "auto: found by a short search before training (lr_search.json "
                                                 "in the run directory; docs/training.md#learning-rate)")
    lr_search_steps: int | None = option(None, "with lr auto: training steps the search may spend in all (None: "
                                               "a tenth of steps, at least 19)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.06, "share of the steps with linearly rising learning rate")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this")
    bf16: bool | Literal["auto"] = option(False, "store the frozen base model in bf16 (half the memory, the "
                                                 "hardware's bf16 matmuls); the adapter, its gradients and optimizer "
                                                 "state stay fp32 (full fine-tuning: fp32 weights under bf16 "
                                                 "autocast); auto: bf16 only where a bf16 matmul measures faster "
                                                 "than fp32 (AVX-512 BF16/AMX CPUs, bf16 GPUs)")
    compile: bool = option(False, "torch.compile the training forward and backward (the first step compiles; "
                                  "falls back to eager with a warning where compiling fails)")
    gradient_checkpointing: bool = option(False, "recompute the layers in the backward pass (less memory)")
    max_length: int = option(160, "longest tokenized example; longer ones are truncated (and counted)")
    train_limit: int | None = option(None, "use only the first N training records (None: all)")
    train_sample_seed: int | None = option(None, "with train_limit: a random subset of that size drawn with this "
                                                 "seed instead of the first records (low-data experiments)")
    eval_limit: int | None = option(100, "evaluate on the first N inputs of eval_split (None: all)")
    eval_every: int = option(100, "evaluate (loss and task metric) every N steps; 0: only at the end")
    save_every: int = option(50, "write a resumable checkpoint every N steps")
    patience: int | None = option(None, "stop after this many evaluations without improvement (None: never)")
    eval_split: str = option("dev", "the split evaluated during training")
    test_split: str | None = option(None, "after training, score the best adapter on this split and write its "
                                          "scores and predictions (None: no test)")
    test_limit: int | None = option(None, "score only the first N inputs of test_split (None: all)")
    max_new_tokens: int = option(60, "decoding for generation metrics: the most tokens generated per input")
    num_beams: int = option(1, "decoding for generation metrics: beam width (1: greedy)")
    no_repeat_ngram: int = option(0, "decoding for generation metrics: never generate an n-gram of this many "
                                     "tokens twice in one output (the prompt's n-grams stay allowed; 0: no guard)")
    stop: list[str] = option(help="decoding for generation metrics: stop at any of these strings",
                             factory=lambda: ["\n"])
    seed: int = option(0, "seeds the data order, the initialization and dropout")
    out: str = option("runs/run", "the run directory (config.json, metrics, checkpoints, adapters, scores)")
    report_to: list[str] = option(help="experiment trackers for the metrics through accelerate: tensorboard, wandb, "
                                       "mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio, or all (those "
                                       "installed); TensorBoard writes under <out>/trackers; none: no tracker",
                                  factory=list)
    distributed: Literal["ddp", "fsdp"] = option("ddp", "with several processes: ddp (each holds the whole model) or "
                                                        "fsdp (the frozen base's weights sharded across them; "
                                                        "adapter methods only; see docs/training.md)")

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):  # report_to: tensorboard,wandb in a file
            self.report_to = [name.strip() for name in self.report_to.split(",") if name.strip()]
        if isinstance(self.report_to, list):
            self.report_to = [name for name in self.report_to if name != "none"]
        if isinstance(self.data, os.PathLike):
            self.data = os.fspath(self.data)
        hints = _field_types()
        for f in dataclasses.fields(self):
            if f.name == "data" and type(self.data).__name__ in ("Dataset", "DatasetDict"):
                continue  # an in-memory datasets object, in Python (config.json records its description)
            check_type(getattr(self, f.name), hints[f.name], f.name)
        train_method(self.method)  # a known method, or a ConfigError listing them
        for name in ("steps", "batch_size", "grad_accum", "max_length", "save_every", "max_new_tokens", "num_beams",
                     "train_limit", "eval_limit", "test_limit", "patience", "lr_search_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}" + (" (None: no limit)" if name.endswith(
                    ("_limit", "patience")) else ""))
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (0: evaluate only at the end), got {self.eval_every}")
        if self.no_repeat_ngram < 0:
            raise ConfigError(f"no_repeat_ngram must be >= 0 (0: no repetition guard), got {self.no_repeat_ngram}")
        if self.max_seconds is not None:
            check_range("max_seconds", self.max_seconds, low=0.0, hint="0: one step; None: no budget")
        if self.lr != "auto":
            check_range("lr", self.lr, low=0.0, high=MAX_RATE, hint=RATE_HINT + "; auto: searched before training")
        check_range("weight_decay", self.weight_decay, low=0.0, high=MAX_RATE, hint=RATE_HINT)
        check_range("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0)
        check_range("max_grad_norm", self.max_grad_norm, low=0.0, hint="0 turns clipping off; a negative "
                            "limit would scale the gradient by a negative factor and ascend it")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")
        check_adapter(self.method, self.adapter)
        if self.distributed == "fsdp" and train_method(self.method).baseline:
            raise ConfigError(f"--distributed fsdp shards a frozen base model; the {self.method} baseline trains "
                              "base-model weights: use ddp (or DeepSpeed, see docs/training.md)")

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (an in-memory ``data`` set becomes its description)."""
        values = dataclasses.asdict(dataclasses.replace(self, data=None))  # asdict would deep-copy a data set
        values["data"] = describe(self.data)
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a training config is a mapping of options, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        extra = sorted(map(str, set(data) - set(known)))
        if extra:
            raise unknown_option(extra[0], known, "a training config")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """The config in a YAML or JSON file; a ConfigError naming the file for any bad value."""
        try:
            return cls.from_dict(read_mapping(path))
        except ConfigError as e:
            message = str(e)
            raise ConfigError(message if message.startswith(f"{path}:") else f"{path}: {message}") from None


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def check_adapter(method: str, adapter: dict[str, Any]) -> None:
    """``adapter`` holds options of ``method``'s config (keys, types, and the config's own checks)."""
    config_cls = train_method(method).config
    options = config_cls.options()
    for key, value in adapter.items():
        if key in getattr(config_cls, "SUBCONFIGS", {}):
            continue  # a whole sub-config, given as a mapping: the config checks it
        if key not in options:
            raise unknown_option(key, list(options), f"adapter: method {method}")
        check_type(value, options[key].type, f"adapter.{key}")
    config_cls(**adapter)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file holding a mapping of options."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as a config file ({e.__class__.__name__}: "
                          f"{getattr(e, 'strerror', None) or e})") from None
    if str(path).endswith((".yaml", ".yml")):
        yaml = require("yaml", "train", "YAML config reading")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
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
