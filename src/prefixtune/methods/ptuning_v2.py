"""P-tuning v2 (Liu et al. 2022): a prefix at every layer plus a trainable task head.

For understanding tasks on encoders (BERT, RoBERTa, DistilBERT, MiniLM) and decoders (pooling
the last real token). Only the prefix and the head train.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefixtune.core.config import ConfigError, ConfigIO, PrefixConfig

TASKS = ("sequence-classification", "token-classification")


@dataclass
class PTuningV2Config(ConfigIO):
    """Configuration of P-tuning v2.

    Fields:
        prefix_length: prefix length (the paper: < 20 for simple classification, ~100 for labeling).
        reparameterization: ``"direct"`` (the paper's default) or ``"mlp"``.
        hidden_size: MLP width when ``reparameterization="mlp"``.
        dropout: dropout on the prefix keys/values.
        init_std: standard deviation of the random prefix init.
        exclude_layers: layers without a prefix.
        position_mode: as in :class:`PrefixConfig`.
        task: ``"sequence-classification"`` or ``"token-classification"``.
        num_labels: number of classes (1 = regression for sequence classification).
        pooling: ``"cls"`` (encoders), ``"mean"``, or ``"last"`` (decoder-only models).
        head_dropout: dropout before the classifier.
        init, init_text, gate: as in :class:`PrefixConfig`.
    """

    prefix_length: int = 16
    reparameterization: str = "direct"
    hidden_size: int = 512
    dropout: float = 0.1
    init_std: float = 0.02
    exclude_layers: tuple[int, ...] = ()
    position_mode: str | None = None
    task: str = "sequence-classification"
    num_labels: int = 2
    pooling: str = "cls"
    head_dropout: float = 0.1
    init: str = "random"
    init_text: str | None = None
    gate: bool = False
    method: str = field(default="ptuning_v2", init=False)

    def __post_init__(self) -> None:
        self.exclude_layers = tuple(self.exclude_layers)
        if self.position_mode is None:  # same default as PrefixConfig
            self.position_mode = "natural" if self.gate else "shifted"
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.num_labels < 1:
            raise ConfigError(f"num_labels must be >= 1, got {self.num_labels}")
        if self.pooling not in ("cls", "mean", "last"):
            raise ConfigError(f"pooling must be 'cls', 'mean' or 'last', got {self.pooling!r}")
        self.prefix_config()  # validates the prefix fields

    def prefix_config(self) -> PrefixConfig:
        return PrefixConfig(prefix_length=self.prefix_length, reparameterization=self.reparameterization,
                            hidden_size=self.hidden_size, dropout=self.dropout, init_std=self.init_std,
                            exclude_layers=self.exclude_layers, position_mode=self.position_mode,
                            init=self.init, init_text=self.init_text, gate=self.gate)
