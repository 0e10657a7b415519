"""``CompareConfig``: which methods, sweeps and low-data runs one comparison holds.

A comparison file (YAML or JSON) looks like::

    name: e2e
    out: runs/compare-e2e
    base:                      # TrainConfig fields shared by every run (same data, budget, evaluation)
      model: smollm2-135m
      task: e2e
      steps: 150
      test_split: test
      test_limit: 100
    seeds: [0]
    methods:                   # name -> method, adapter options, and any TrainConfig override (lr ...)
      prefix-mlp: {method: prefix, adapter: {prefix_length: 10, hidden_size: 512}, lr: 5.0e-4}
      lora: {method: lora, adapter: {r: 8}, lr: 1.0e-3}
    sweep:                     # optional grid around one of the methods (or a list of such grids)
      method: prefix-mlp
      grid: {prefix_length: [1, 5, 10, 20, 40], reparameterization: [mlp, direct]}
    low_data:                  # optional training-size curve
      methods: [prefix-mlp, full]
      sizes: [50, 100, 200, 500]
      seeds: [0, 1, 2]
    contrasts: [[prefix-mlp, lora]]   # optional: a paired bootstrap interval of each difference a - b

Grid keys that are TrainConfig fields (``lr``, ``steps`` ...) override the run; all others are
adapter options. A grid key with a single value (not a list) is a fixed override, not swept.
``sweep`` may also be a list of grids, each with a unique ``name`` (default: its method), e.g. one
grid of length x learning rate per reparameterization, since each needs its own learning-rate range.
Sweep runs live in ``<out>/sweep/<name>/<point>/seed<seed>``. Top-level keys starting with ``x-``
are ignored, so they can hold YAML anchors shared by several grids (``x-short: &short {steps: 80}``,
then ``grid: {<<: *short, lr: [1e-3, 1e-2]}``).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefixtune.core.config import ConfigError
from prefixtune.train.config import TrainConfig, read_mapping

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def sweep_keys(grid: dict[str, Any]) -> list[str]:
    """The grid's swept options (those given a list); single values are fixed overrides."""
    return [k for k, v in grid.items() if isinstance(v, list)]


@dataclass
class RunSpec:
    """One training run of a comparison: its group, display name, labels and full config."""

    group: str  # "methods", "sweep" or "low_data"
    name: str  # unique, also the run's directory below ``out``
    method: str  # the method's name in the comparison
    labels: dict[str, Any]
    config: TrainConfig
    part: str = ""  # the sweep's name (group "sweep" only)


@dataclass
class CompareConfig:
    """A comparison (see the module docstring for the file format).

    Fields:
        name: a short name (report titles, section keys).
        out: directory of the comparison; each run gets a subdirectory.
        base: TrainConfig fields shared by every run.
        methods: method name -> ``{"method": ..., "adapter": {...}, <TrainConfig overrides>}``.
        seeds: seeds of the method runs (mean and spread are reported over them).
        sweep: ``{"name": ..., "method": <name>, "grid": {key: [values]}, "seeds": [...]}``, a list of
            such mappings, or None (see :meth:`sweeps`).
        low_data: ``{"methods": [...], "sizes": [...], "seeds": [...], <TrainConfig overrides>,
            "method_overrides": {<method>: {<TrainConfig overrides>}}}`` or None; each run trains
            on a random subset of that size (seeded) of the training data.
        contrasts: ``[[a, b], ...]`` pairs of methods; the report gives the paired bootstrap interval
            of ``a - b`` for each (:mod:`prefixtune.compare.bootstrap`), over the inputs every run scored.
        bootstrap_samples: resamples per contrast.
    """

    name: str = "comparison"
    out: str = "runs/compare"
    base: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    sweep: dict[str, Any] | None = None
    low_data: dict[str, Any] | None = None
    contrasts: list[list[str]] = field(default_factory=list)
    bootstrap_samples: int = 1000

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("a comparison needs at least one entry under 'methods'")
        unknown = sorted(set(self.base) - _TRAIN_FIELDS)
        if unknown:
            raise ConfigError(f"base: unknown training options {unknown}")
        for name, m in self.methods.items():
            if not isinstance(m, dict) or "method" not in m:
                raise ConfigError(f"methods.{name}: give at least 'method' (prefix, prompt, ptuning_v2, lora, full)")
            bad = sorted(set(m) - _TRAIN_FIELDS)
            if bad:
                raise ConfigError(f"methods.{name}: unknown options {bad}")
        if self.sweep is not None and not isinstance(self.sweep, (dict, list)):
            raise ConfigError("sweep must be a mapping {method, grid} or a list of them")
        names: set[str] = set()
        for i, sw in enumerate(self.sweeps()):
            where = "sweep" if isinstance(self.sweep, dict) else f"sweep[{i}]"
            if not isinstance(sw, dict):
                raise ConfigError(f"{where} must be a mapping with 'method' and 'grid'")
            bad = sorted(set(sw) - {"name", "method", "grid", "seeds"})
            if bad:
                raise ConfigError(f"{where}: unknown keys {bad}; known: grid, method, name, seeds")
            if sw.get("method") not in self.methods:
                raise ConfigError(f"{where}.method must name one of the methods {sorted(self.methods)}")
            if not isinstance(sw.get("grid"), dict) or not sweep_keys(sw["grid"]):
                raise ConfigError(f"{where}.grid must map option names to lists of values (single values are fixed)")
            name = str(sw.get("name") or sw["method"])
            if name in names or "/" in name:
                raise ConfigError(f"{where}.name {name!r} must be unique among the sweeps and contain no '/'; "
                                  "give each sweep its own 'name'")
            names.add(name)
        if self.low_data is not None:
            missing = [m for m in self.low_data.get("methods", []) if m not in self.methods]
            if missing or not self.low_data.get("methods"):
                raise ConfigError(f"low_data.methods must name methods of the comparison (unknown: {missing})")
            if not self.low_data.get("sizes"):
                raise ConfigError("low_data.sizes must list training-set sizes")
            stray = sorted(set(self.low_data.get("method_overrides") or {}) - set(self.low_data["methods"]))
            if stray:
                raise ConfigError(f"low_data.method_overrides names methods not in low_data.methods: {stray}")
        self._check_contrasts()

    def _check_contrasts(self) -> None:
        if not isinstance(self.contrasts, list):
            raise ConfigError("contrasts must be a list of method pairs, e.g. [[prefix-mlp, lora]]")
        for i, pair in enumerate(self.contrasts):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(f"contrasts[{i}] must be two different method names, e.g. [prefix-mlp, lora]")
            unknown = [m for m in pair if m not in self.methods]
            if unknown:
                raise ConfigError(f"contrasts[{i}] names {unknown}, not methods of the comparison {sorted(self.methods)}")
        if not isinstance(self.bootstrap_samples, int) or self.bootstrap_samples < 100:
            raise ConfigError(f"bootstrap_samples must be an integer >= 100 (got {self.bootstrap_samples!r})")

    @classmethod
    def load(cls, path: str | Path) -> "CompareConfig":
        data = {k: v for k, v in read_mapping(path).items() if not str(k).startswith("x-")}  # x-*: YAML anchors
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"{path}: unknown comparison options {extra}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sweeps(self) -> list[dict[str, Any]]:
        """The sweeps as a list of ``{"name", "method", "grid", "seeds"}`` (``name`` defaults to the method)."""
        raw = [] if self.sweep is None else [self.sweep] if isinstance(self.sweep, dict) else list(self.sweep)
        return [{**sw, "name": str(sw.get("name") or sw.get("method"))} if isinstance(sw, dict) else sw for sw in raw]

    # ------------------------------------------------------------------ expansion

    def _train_config(self, method: str, run_dir: str, overrides: dict[str, Any]) -> TrainConfig:
        values: dict[str, Any] = {**self.base, **self.methods[method]}
        adapter = dict(values.get("adapter") or {})
        for key, value in overrides.items():
            if key in _TRAIN_FIELDS:
                values[key] = value
            else:
                adapter[key] = value
        values["adapter"] = adapter
        values["out"] = str(Path(self.out) / run_dir)
        try:
            return TrainConfig.from_dict(values)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"run {run_dir}: {e}") from None

    def runs(self) -> list[RunSpec]:
        """Every run of the comparison, in the order they are trained."""
        out: list[RunSpec] = []
        for method in self.methods:
            for seed in self.seeds:
                name = f"methods/{method}/seed{seed}"
                out.append(RunSpec("methods", name, method, {"seed": seed}, self._train_config(method, name, {"seed": seed})))
        for sw in self.sweeps():
            method, grid = sw["method"], sw["grid"]
            keys = sweep_keys(grid)
            fixed = {k: v for k, v in grid.items() if k not in keys}
            for values in itertools.product(*(grid[k] for k in keys)):
                point = dict(zip(keys, values))
                for seed in sw.get("seeds", [self.seeds[0]]):
                    tag = ",".join(f"{k}={v}" for k, v in point.items())
                    name = f"sweep/{sw['name']}/{tag}/seed{seed}"
                    out.append(RunSpec("sweep", name, method, {**point, "seed": seed},
                                       self._train_config(method, name, {**fixed, **point, "seed": seed}),
                                       part=sw["name"]))
        if self.low_data:
            shared = {k: v for k, v in self.low_data.items() if k in _TRAIN_FIELDS}
            per_method = self.low_data.get("method_overrides") or {}
            for method in self.low_data["methods"]:
                for size in self.low_data["sizes"]:
                    for seed in self.low_data.get("seeds", self.seeds):
                        name = f"low_data/{method}/n{size}/seed{seed}"
                        over = {**shared, **per_method.get(method, {}), "train_limit": size, "train_sample_seed": seed,
                                "seed": seed}
                        out.append(RunSpec("low_data", name, method, {"size": size, "seed": seed},
                                           self._train_config(method, name, over)))
        return out
