"""``--lr auto``: the learning rate found by a short successive-halving search before training.

The right rate differs by a factor of 100 between methods (full fine-tuning ~3e-5, a direct
prefix ~1e-2) and a wrong one fails silently (a direct prefix at full fine-tuning's rate learns
nothing; at 10x its own it produces only empty outputs), so a rate that is not given is measured:

1. Five candidates, a factor sqrt(10) apart, centred on the method's usual rate
   (:func:`candidates`: the centre depends on the method and its reparameterization).
2. Round ``r`` (``r = 0, 1, 2``) trains every surviving candidate from the run's initial
   state for ``t * 2**r`` steps: the run's own first batches, AdamW at a constant rate, the run's
   clipping and precision. Each is then scored by its mean loss per target token (or example) on
   two *probe* batches that no trial trained on (the batches that follow the longest trial's in
   the run's data order). A trial that diverges (a non-finite loss, gradient or weight) scores
   infinity.
3. After each round the better half survives (5 -> 3 -> 2 -> 1); ties go to the smaller rate.

Every trial starts from the same weights and batches, so the comparison is paired, and after the
search the trainable weights and every random generator are restored: a run with ``lr: auto``
trains exactly as a run given the chosen rate. The search costs ``19 t`` training steps plus eleven
probe evaluations, ``t`` chosen so that this is about ``search_steps`` (by default a tenth of the
run's steps, at least 19). Only rank 0 searches; every process takes its choice. Everything it
tried is written to ``lr_search.json`` in the run directory, and a run that resumes (or reruns)
reads the choice from there instead of searching again.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from prefixtune.data.batching import Encoded, collate
from prefixtune.evaluation.loss import batch_loss
from prefixtune.io.files import atomic_write
from prefixtune.train import guard

log = logging.getLogger(__name__)

FILE = "lr_search.json"
SPREAD = 10 ** 0.5  # between neighbouring candidates
N_CANDIDATES = 5
SURVIVORS = (3, 2, 1)  # after rounds 0, 1, 2
#: training steps per unit t: round r trains each of its candidates t * 2**r steps
COST = sum(alive * 2 ** r for r, alive in enumerate((N_CANDIDATES, *SURVIVORS[:-1])))
PROBE_BATCHES = 2

#: the centre of the candidates by (method, variant): the rates our sweeps found good
CENTRES = {("prefix", "mlp"): 3e-3, ("prefix", "direct"): 1e-2, ("ptuning_v2", "mlp"): 3e-3,
           ("ptuning_v2", "direct"): 1e-2, ("prompt", "none"): 1e-2, ("prompt", "mlp"): 3e-3,
           ("prompt", "lstm"): 3e-3, ("lora", ""): 1e-3, ("full", ""): 3e-5}


def centre(method: str, config: Any) -> float:
    """The method's usual rate: by its reparameterization (prefix, P-tuning v2) or prompt encoder."""
    prefix = getattr(config, "prefix_config", None)
    variant = prefix.reparameterization if prefix is not None else getattr(config, "encoder", "")
    return CENTRES.get((method, variant)) or CENTRES.get((method, "")) or 1e-3


def candidates(method: str, config: Any) -> list[float]:
    """Five rates, a factor sqrt(10) apart, around :func:`centre` (three significant digits)."""
    mid = centre(method, config)
    return [float(f"{mid * SPREAD ** k:.3g}") for k in range(-(N_CANDIDATES // 2), N_CANDIDATES // 2 + 1)]


def unit_steps(search_steps: int) -> int:
    """``t``: the steps of a round-0 trial, so that the search trains about ``search_steps`` steps."""
    return max(1, round(search_steps / COST))


@dataclass
class Trials:
    """What one search tried: per round, the steps of its trials and each candidate's probe loss."""

    candidates: list[float]
    unit: int
    initial_probe_loss: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    chosen: float | None = None
    seconds: float = 0.0
    probe_examples: int = 0


@dataclass
class Searcher:
    """The pieces of a run the trials need (built by the loop from its :class:`Run`).

    Fields:
        model: the trainable model (``trainable_parameters()``; its trainable weights are restored).
        batches: step -> the training examples of that step's global batch (the run's order).
        kind: ``"generation"`` or ``"classification"``.
        pad_id: the tokenizer's pad id.
        micro: examples per forward (``batch_size // grad_accum``).
        max_grad_norm: the run's clipping (0: none).
        weight_decay: the run's AdamW weight decay.
        autocast: the run's forward context (:func:`prefixtune.train.precision.autocast`).
        trim: compute the LM head only from the first target on.
        device: where batches go.
    """

    model: Any
    batches: Callable[[int], list[Encoded]]
    kind: str
    pad_id: int
    micro: int
    max_grad_norm: float
    weight_decay: float
    autocast: Callable[[], ContextManager[Any]]
    trim: bool
    device: torch.device

    def _tensors(self, rows: list[Encoded]) -> list[dict[str, torch.Tensor]]:
        chunks = [rows[i:i + self.micro] for i in range(0, len(rows), self.micro)]
        return [{k: v.to(self.device) for k, v in collate(c, self.pad_id).items()} for c in chunks]

    def probe_loss(self, probe: list[dict[str, torch.Tensor]]) -> float:
        """Mean loss per target on the probe batches (eval mode, no gradients)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), self.autocast():
            for batch in probe:
                loss_sum, n, _ = batch_loss(self.model, batch, self.kind, trim_logits=self.trim)
                total, count = total + float(loss_sum), count + n
        self.model.train(was_training)
        return total / max(1, count) if math.isfinite(total) else math.inf

    def train_trial(self, lr: float, steps: int) -> bool:
        """``steps`` AdamW steps at the constant rate ``lr`` on the run's first batches; False if
        the loss, the gradient or a weight stopped being finite."""
        params = list(self.model.trainable_parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        self.model.train()
        for step in range(steps):
            parts = self._tensors(self.batches(step))
            count = sum(int((b["labels"][:, 1:] != -100).sum()) if self.kind == "generation" else len(b["labels"])
                        for b in parts)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for batch in parts:
                with self.autocast():
                    loss_sum, _, _ = batch_loss(self.model, batch, self.kind, trim_logits=self.trim)
                (loss_sum / max(1, count)).backward()
                total += float(loss_sum.detach())
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm or math.inf))
            try:  # the training loop's own divergence checks
                guard.check_step(step + 1, total / max(1, count), norm, lr)
                opt.step()
                guard.check_parameters(params, step + 1, lr)
            except guard.DivergedError:
                return False
        return True


def search(searcher: Searcher, rates: list[float], search_steps: int) -> Trials:
    """Successive halving over ``rates`` (see the module docstring); the model's trainable weights,
    its training mode and every random generator are as before when it returns."""
    start = time.perf_counter()
    unit = unit_steps(search_steps)
    params = list(searcher.model.trainable_parameters())
    initial = [p.detach().clone() for p in params]
    rng = _rng_state()
    was_training = searcher.model.training
    longest = unit * 2 ** (len(SURVIVORS) - 1)
    probe = [b for s in range(longest, longest + PROBE_BATCHES) for b in searcher._tensors(searcher.batches(s))]
    trials = Trials(list(rates), unit, searcher.probe_loss(probe),
                    probe_examples=sum(len(b["input_ids"]) for b in probe))
    alive = list(rates)
    try:
        for r, keep in enumerate(SURVIVORS):
            steps, losses = unit * 2 ** r, {}
            for lr in alive:
                _restore(params, initial)
                _set_rng(rng)
                ok = searcher.train_trial(lr, steps)
                losses[lr] = searcher.probe_loss(probe) if ok else math.inf
            trials.rounds.append({"steps": steps, "probe_loss": {f"{lr:g}": _json_loss(v) for lr, v in losses.items()}})
            alive = sorted(alive, key=lambda lr: (losses[lr], lr))[:keep]
            log.info(f"lr auto, round {r + 1}: {steps} step(s) each, probe loss "
                     + ", ".join(f"{lr:g}: {losses[lr]:.4g}" for lr in sorted(losses)))
    finally:
        _restore(params, initial)
        _set_rng(rng)
        searcher.model.train(was_training)
    if not math.isfinite(losses[alive[0]]):
        raise RuntimeError(f"lr auto: every candidate rate ({', '.join(f'{lr:g}' for lr in rates)}) diverged "
                           "within a few steps; give --lr explicitly (smaller), or check the data and --max-grad-norm")
    trials.chosen = alive[0]
    trials.seconds = time.perf_counter() - start
    return trials


def _json_loss(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _restore(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
            p.grad = None


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def saved_choice(out: Path) -> float | None:
    """The rate an earlier search of the run in ``out`` chose, or None (no search recorded)."""
    file = Path(out) / FILE
    if not file.is_file():
        return None
    try:
        chosen = json.loads(file.read_text()).get("chosen")
    except (OSError, ValueError, AttributeError):
        return None
    return float(chosen) if isinstance(chosen, (int, float)) and chosen > 0 else None


def record(out: Path, trials: Trials) -> None:
    """Write ``lr_search.json`` (atomically)."""
    atomic_write(Path(out) / FILE, json.dumps(asdict(trials), indent=2).encode())
