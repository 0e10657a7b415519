"""Training end to end on a tiny model: metrics, checkpoints, plots, resume after a kill, DDP."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T

from prefixtune.io.checkpoint import load_parts
from prefixtune.hf.boundary import describe
from prefixtune.train.config import TrainConfig
from prefixtune.train.loop import train
from tiny import save_tiny_bert

ROOT = Path(__file__).resolve().parents[2]


def config(tiny_dir, e2e_dir, out, **kw):
    base = dict(model=str(tiny_dir), task="e2e", data=str(e2e_dir), steps=6, batch_size=4, lr=1e-2,
                eval_every=3, save_every=2, eval_limit=4, max_new_tokens=8, out=str(out),
                adapter={"prefix_length": 4, "hidden_size": 16})
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def logged(caplog):
    """A function returning what the ``prefixtune`` loggers have logged so far (info and up)."""
    caplog.set_level(logging.INFO, logger="prefixtune")
    return lambda: [r.getMessage() for r in caplog.records if r.name.startswith("prefixtune")]


def adapter_state(run: Path, tiny_dir, which: str = "adapter") -> dict:
    """The trained tensors of ``run/which`` (``adapter`` or ``best``)."""
    layout, _ = describe(T.AutoModelForCausalLM.from_pretrained(tiny_dir))
    _, parts = load_parts(run / which, layout)
    return {f"{k}.{n}": v for k in ("prefix", "prompt") if getattr(parts, k) is not None
            for n, v in getattr(parts, k).state_dict().items()}


def test_training_run_writes_everything(tiny_dir, e2e_dir, tmp_path):
    result = train(config(tiny_dir, e2e_dir, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "loss.png", "bleu.png", "result.json", "adapter", "best"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "split" in r] == [3, 6]
    assert {"bleu", "nist", "rouge_l", "cider", "loss"} <= set(result["scores"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert train_losses[-1] < train_losses[0]
    # the values, not just the files: the final scores are the last evaluation's, the best is the best one
    evals = {r["step"]: {k: v for k, v in r.items() if k not in ("step", "split")} for r in rows if "split" in r}
    assert result["scores"] == evals[6] and result["steps_done"] == 6
    best_step = max(evals, key=lambda s: (evals[s]["bleu"], s))
    assert result["best"] == evals[best_step]["bleu"] and result["best_step"] == best_step
    # best/ holds the adapter that scored it, adapter/ the final one: re-scored from disk they agree
    import prefixtune as pt
    from prefixtune.data.tasks import load_task
    from prefixtune.evaluation.evaluate import evaluate
    from prefixtune.train.loop import task_spec

    cfg = config(tiny_dir, e2e_dir, run)
    tok = T.AutoTokenizer.from_pretrained(tiny_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    dev = load_task(task_spec(cfg), "dev", data=cfg.data)
    for name, want in (("best", evals[best_step]), ("adapter", evals[6])):
        pm = pt.load(T.AutoModelForCausalLM.from_pretrained(tiny_dir), run / name)
        scores, _ = evaluate(pm, tok, dev, cfg.max_length, cfg.eval_limit, max_new_tokens=cfg.max_new_tokens)
        assert scores == pytest.approx(want, rel=1e-6), name
    fresh = pt.wrap(T.AutoModelForCausalLM.from_pretrained(tiny_dir), pt.PrefixConfig(prefix_length=4, hidden_size=16))
    assert result["parameters"]["trainable"] == fresh.count_parameters().trainable
    assert result["parameters"]["stored"] == fresh.count_parameters().stored


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_dir, e2e_dir, tmp_path, logged):
    # prefix dropout: the resumed steps only match if the RNG state is restored too
    adapter = {"prefix_length": 4, "hidden_size": 16, "dropout": 0.2}
    whole = config(tiny_dir, e2e_dir, tmp_path / "whole", eval_every=0, adapter=adapter)
    train(whole)
    parts = config(tiny_dir, e2e_dir, tmp_path / "parts", eval_every=0, adapter=adapter)
    assert train(parts, stop_after=3) == {"stopped_at": 3}  # killed after step 3
    # the newest checkpoint (step 2) is used; break a later, half-written one to check it is skipped
    broken = tmp_path / "parts" / "checkpoints" / "step-000005"
    (broken / "adapter").mkdir(parents=True)
    (broken / "state.json").write_text("{")
    train(parts)
    assert any("skipping checkpoint step-000005" in m for m in logged())
    assert any("resuming from" in m and "step 2" in m for m in logged())
    steps = [json.loads(line)["step"] for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 6]  # six training steps, then the final evaluation
    a, b = adapter_state(tmp_path / "whole", tiny_dir), adapter_state(tmp_path / "parts", tiny_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records the initial parameters and, at every step, the learning rate and gradients."""

    runs: list["RecordingAdamW"] = []

    def __init__(self, params, **kw):
        params = list(params)
        super().__init__(params, **kw)
        self.initial = [p.detach().clone() for p in params]
        self.lrs: list[float] = []
        self.grads: list[list[torch.Tensor]] = []
        RecordingAdamW.runs.append(self)

    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]["lr"])
        self.grads.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


@pytest.fixture
def recording(monkeypatch):
    RecordingAdamW.runs = []
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    return RecordingAdamW.runs


def first_batch_oracle(cfg: TrainConfig, initial: list[torch.Tensor]):
    """Independently of the loop: the mean target-token cross-entropy of the first step's batch
    (every position's logits, shifted by hand) and its gradient, from the recorded initial parameters."""
    import prefixtune as pt
    from prefixtune.data.batching import collate, encode, length_grouped_batches
    from prefixtune.data.tasks import load_task
    from prefixtune.train.config import task_spec
    from prefixtune.train.methods import method_config

    tok = T.AutoTokenizer.from_pretrained(cfg.model)
    tok.pad_token = tok.pad_token or tok.eos_token
    spec = task_spec(cfg)
    examples = load_task(spec, "train", data=cfg.data).examples
    encoded, _ = encode(tok, examples, cfg.max_length, "generation")
    index = length_grouped_batches([len(e.input_ids) for e in encoded], cfg.batch_size, cfg.seed, 0)[0]
    batch = collate([encoded[i] for i in index], tok.pad_token_id)
    pm = pt.wrap(T.AutoModelForCausalLM.from_pretrained(cfg.model), method_config(cfg.method, cfg.adapter, "generation"))
    with torch.no_grad():
        for p, value in zip(pm.trainable_parameters(), initial, strict=True):
            p.copy_(value)
    pm.train()
    logits = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = torch.log_softmax(logits, -1)
    terms = []
    for row in range(logits.shape[0]):
        for j in range(logits.shape[1] - 1):
            target = int(batch["labels"][row, j + 1])
            if target != -100:
                terms.append(-logp[row, j, target])
    loss = torch.stack(terms).mean()
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in pm.trainable_parameters()]


@pytest.mark.parametrize("method,adapter", [("prefix", {"prefix_length": 4, "hidden_size": 16}),
                                            ("prompt", {"num_virtual_tokens": 3})])
def test_logged_loss_and_gradients_equal_an_independent_computation(tiny_dir, e2e_dir, tmp_path, recording,
                                                                    method, adapter):
    """Step 1's logged loss is the mean target-token cross-entropy of its batch, and the gradient the
    optimizer sees is that loss's gradient (its norm the logged ``grad_norm``), with and without
    gradient accumulation (no clipping)."""
    runs = {}
    for accum in (1, 2):
        cfg = config(tiny_dir, e2e_dir, tmp_path / f"accum{accum}", method=method, adapter=adapter, eval_every=0,
                     steps=2, grad_accum=accum, max_grad_norm=0.0)
        train(cfg)
        rows = [json.loads(line) for line in (tmp_path / f"accum{accum}" / "metrics.jsonl").read_text().splitlines()]
        runs[accum] = (recording[-1], [r["train_loss"] for r in rows if "train_loss" in r],
                       [r["grad_norm"] for r in rows if "train_loss" in r])
    want_loss, want_grads = first_batch_oracle(cfg, runs[1][0].initial)
    want_norm = float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in want_grads])))
    for accum, (opt, losses, norms) in runs.items():
        assert losses[0] == pytest.approx(want_loss, rel=1e-5), accum
        assert norms[0] == pytest.approx(want_norm, rel=1e-4), accum
        assert len(opt.grads) == 2
        for got, want in zip(opt.grads[0], want_grads, strict=True):
            assert want.abs().max() > 0
            torch.testing.assert_close(got.double(), want.double(), atol=1e-7, rtol=1e-4)
    for a, b in zip(runs[1][0].grads[1], runs[2][0].grads[1], strict=True):  # and so on, step after step
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)


def test_logged_grad_norm_is_the_norm_before_clipping(tiny_dir, e2e_dir, tmp_path, recording):
    """With ``max_grad_norm`` 0 the optimizer sees the gradients unclipped and ``grad_norm`` is their
    norm; with a small limit it sees them clipped to that norm, and ``grad_norm`` is still the norm
    before clipping (the same first step, so the same norm)."""
    norms = {}
    for limit in (0.0, 1e-3):
        cfg = config(tiny_dir, e2e_dir, tmp_path / f"clip{limit}", eval_every=0, steps=1, max_grad_norm=limit)
        train(cfg)
        rows = [json.loads(line) for line in (tmp_path / f"clip{limit}" / "metrics.jsonl").read_text().splitlines()]
        seen = float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in recording[-1].grads[0]])))
        norms[limit] = (rows[0]["grad_norm"], seen)
    logged, seen = norms[0.0]
    assert logged == pytest.approx(seen, rel=1e-5) and logged > 1e-2
    clipped_logged, clipped_seen = norms[1e-3]
    assert clipped_logged == pytest.approx(logged, rel=1e-5)
    assert clipped_seen == pytest.approx(1e-3, rel=1e-3)


def test_warmup_and_decay_and_the_logged_rate_is_the_rate_used(tiny_dir, e2e_dir, tmp_path, recording):
    """Linear warmup over ``round(0.3 * 10) = 3`` steps, then linear decay; step ``k`` (0-based) runs at
    ``lr * min((k + 1) / 3, (10 - k) / 7)``: never 0, the peak at step 3; ``lr`` in metrics.jsonl is that rate."""
    cfg = config(tiny_dir, e2e_dir, tmp_path / "run", eval_every=0, steps=10, warmup_ratio=0.3, lr=1e-2,
                 save_every=100)
    train(cfg)
    want = [1e-2 * min((k + 1) / 3, (10 - k) / 7) for k in range(10)]
    assert recording[-1].lrs == pytest.approx(want, rel=1e-12)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "train_loss" in r] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_schedule_is_transformers_linear_schedule_one_warmup_step_ahead(warmup):
    """The one schedule against transformers' ``get_linear_schedule_with_warmup``: the same linear
    decay, but warmup step ``k`` runs at ``(k + 1) / warmup``, not ``k / warmup`` (no step at rate 0)."""
    from prefixtune.train.loop import linear_warmup_decay

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = T.get_linear_schedule_with_warmup(opt, warmup, 10).lr_lambdas[0]
    ours = linear_warmup_decay(10, warmup)
    assert [ours(k) for k in range(10)] == pytest.approx([theirs(k + 1 if k < warmup else k) for k in range(10)],
                                                         rel=1e-12)
    assert ours(0) > 0 and ours(9) > 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process(tiny_dir, e2e_dir, tmp_path):
    """Two CPU processes (gloo), started with the command docs/training.md gives for a CPU machine
    (``accelerate launch --multi_gpu --num_processes 2``), with the same global batch train the same
    prefix as one process, and log the same loss (the whole batch's, not rank 0's share), gradient
    norm and token count at every step; the start-up line shows the two processes."""
    single = config(tiny_dir, e2e_dir, tmp_path / "single", eval_every=0, steps=4)
    train(single)
    cfg_file = tmp_path / "ddp.json"
    ddp = config(tiny_dir, e2e_dir, tmp_path / "ddp", eval_every=0, steps=4)
    cfg_file.write_text(json.dumps(ddp.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", "prefixtune.cli", "train", "--config", str(cfg_file)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "INFO [rank 0] prefixtune.train.loop: world size 2 (MULTI_CPU)" in result.stderr, result.stderr[-3000:]
    assert "[rank 1]" not in result.stderr  # the other process logs warnings only
    a, b = adapter_state(tmp_path / "single", tiny_dir), adapter_state(tmp_path / "ddp", tiny_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                   if "train_loss" in line] for name in ("single", "ddp")}
    assert [r["step"] for r in rows["ddp"]] == [1, 2, 3, 4]
    for one, two in zip(rows["single"], rows["ddp"], strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-6), one["step"]
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4), one["step"]
    results = {name: json.loads((tmp_path / name / "result.json").read_text()) for name in ("single", "ddp")}
    assert results["ddp"]["train_tokens"] == results["single"]["train_tokens"]


def launch_two_processes(args: list[str], log: Path, timeout: float) -> None:
    """``args`` under ``torch.distributed.run`` with two CPU processes on a free port, output to
    ``log``; fails the test unless both exit 0 within ``timeout`` seconds (a hang is a failure)."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the launcher takes its workers down with it
            proc.wait(timeout=60)
            pytest.fail(f"two-process run still running after {timeout:g} s:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_two_processes_stop_early_together_and_a_rerun_trains_no_more(tiny_dir, e2e_dir, tmp_path):
    """Patience 1 with scripted scores 50, 40 at steps 1, 2: only rank 0 evaluates, yet both processes
    stop after step 2 (no hang, no diverging ranks); the checkpoint records the stop, and a
    two-process rerun resumes from it and trains no more."""
    cfg = config(tiny_dir, e2e_dir, tmp_path / "run", steps=6, eval_every=1, save_every=100, patience=1)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "scores.json").write_text(json.dumps([50.0, 40.0, 45.0, 44.0]))
    worker = str(Path(__file__).with_name("ddp_worker.py"))

    def run_twice(tag: str) -> list[dict]:
        seen = tmp_path / tag
        seen.mkdir()
        # a hung process gives up after 60 s (ddp_worker.py), the launcher then ends the other one
        launch_two_processes([worker, str(tmp_path / "cfg.json"), str(tmp_path / "scores.json"), str(seen), "60"],
                             tmp_path / f"{tag}.log", timeout=120)
        return [json.loads((seen / f"rank-{r}.json").read_text()) for r in (0, 1)]

    first = run_twice("first")
    assert [s["optimizer_steps"] for s in first] == [2, 2]
    assert first[0]["result"]["steps_done"] == 2 and first[0]["result"]["best_step"] == 1
    assert first[1]["result"] == {}  # only rank 0 reports
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]
    progress = json.loads((run / "checkpoints" / "step-000002" / "state.json").read_text())["progress"]
    assert progress["stopped"].startswith("early stopping at step 2") and progress["bad_evals"] == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 2, 2, 2]  # train, eval, train, eval, final eval
    again = run_twice("again")
    assert [s["optimizer_steps"] for s in again] == [0, 0]
    assert again[0]["result"]["steps_done"] == 2 and again[0]["result"]["best"] == 50.0


def test_two_processes_take_rank_0s_bf16_auto_choice(tiny_dir, e2e_dir, tmp_path, monkeypatch):
    """``bf16: auto`` where the two processes' probes disagree (rank 0: bf16 fast, rank 1: slow):
    both train on a bf16 base, rank 0's choice, and the run records it."""
    cfg = config(tiny_dir, e2e_dir, tmp_path / "run", steps=2, eval_every=0, save_every=100, bf16="auto")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "scores.json").write_text(json.dumps([50.0]))
    seen = tmp_path / "seen"
    seen.mkdir()
    monkeypatch.setenv("PREFIXTUNE_TEST_BF16_SPEEDUPS", "[2.4, 0.012]")
    launch_two_processes([str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path / "cfg.json"),
                          str(tmp_path / "scores.json"), str(seen), "60"], tmp_path / "log", timeout=120)
    ranks = [json.loads((seen / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["dtypes"] for r in ranks] == [["torch.bfloat16"], ["torch.bfloat16"]]
    assert [r["optimizer_steps"] for r in ranks] == [2, 2]
    assert ranks[0]["result"]["bf16"] is True
    assert json.loads((tmp_path / "run" / "precision.json").read_text())["bf16"] is True


def baseline_state(run: Path, tiny_dir) -> dict:
    from prefixtune.train.baselines import load_baseline

    bm = load_baseline(T.AutoModelForCausalLM.from_pretrained(tiny_dir), run / "adapter")
    return bm.trainable_state_dict()


@pytest.mark.parametrize("method,adapter", [("lora", {"r": 2}), ("full", {})])
def test_baselines_train_and_resume_exactly(tiny_dir, e2e_dir, tmp_path, method, adapter):
    whole = config(tiny_dir, e2e_dir, tmp_path / "whole", method=method, adapter=adapter, eval_every=0, steps=4,
                   lr=1e-3)
    result = train(whole)
    params = result["parameters"]
    if method == "full":
        assert params["trainable"] == params["base"]
    else:
        assert 0 < params["trainable"] < params["base"] / 10
    parts = config(tiny_dir, e2e_dir, tmp_path / "parts", method=method, adapter=adapter, eval_every=0, steps=4,
                   lr=1e-3)
    train(parts, stop_after=3)  # killed after step 3: resumes from the step-2 checkpoint
    train(parts)
    a, b = baseline_state(tmp_path / "whole", tiny_dir), baseline_state(tmp_path / "parts", tiny_dir)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_time_budget_stops_the_run_and_a_rerun_does_not_train_more(tiny_dir, e2e_dir, tmp_path, logged):
    cfg = config(tiny_dir, e2e_dir, tmp_path / "run", eval_every=0, steps=50, max_seconds=0.0)
    result = train(cfg)
    assert result["steps_done"] == 1 and any("time budget" in m for m in logged())
    assert result["train_seconds"] > 0 and result["train_tokens"] > 0
    before = adapter_state(tmp_path / "run", tiny_dir)
    again = train(cfg)
    assert again["steps_done"] == 1
    after = adapter_state(tmp_path / "run", tiny_dir)
    for k in before:
        torch.testing.assert_close(before[k], after[k], rtol=0, atol=0)


@pytest.mark.parametrize("method,adapter", [("ptuning_v2", {"prefix_length": 2, "pooling": "mean"}),
                                            ("prompt", {"num_virtual_tokens": 2, "pooling": "mean"}),
                                            ("lora", {"r": 2, "pooling": "mean"}), ("full", {"pooling": "mean"})])
def test_classification_methods_learn_an_easy_task(tiny_bert_dir, sentiment_dir, tmp_path, method, adapter):
    cfg = TrainConfig(model=str(tiny_bert_dir), task="sst2", data=str(sentiment_dir), method=method, adapter=adapter,
                      steps=40, batch_size=16, lr=3e-2 if method != "full" else 3e-3, eval_every=0, eval_limit=None,
                      out=str(tmp_path / "run"), max_length=16)
    result = train(cfg)
    assert result["scores"]["accuracy"] == 100.0, result["scores"]


@pytest.mark.parametrize("method", ["prefix", "prompt", "lora", "full"])
def test_trimmed_logits_give_the_same_loss(tiny_dir, method):
    """The LM head on the target positions only (logits_to_keep) == the head on every position."""
    import prefixtune as pt
    from prefixtune.train.baselines import BaselineModel, FullConfig, LoraConfig
    from prefixtune.data.batching import Encoded, collate
    from prefixtune.evaluation.loss import batch_loss
    from prefixtune.train.loop import _accepts_logits_to_keep

    base = T.AutoModelForCausalLM.from_pretrained(tiny_dir)
    model = {"prefix": lambda: pt.wrap(base, pt.PrefixConfig(prefix_length=3, hidden_size=8)),
             "prompt": lambda: pt.wrap(base, pt.PromptConfig(num_virtual_tokens=2)),
             "lora": lambda: BaselineModel(base, LoraConfig(r=2)),
             "full": lambda: BaselineModel(base, FullConfig())}[method]()
    assert _accepts_logits_to_keep(model)
    rows = [Encoded([5, 6, 7, 8, 9, 10, 11], labels=[-100, -100, -100, 8, 9, 10, 11]),
            Encoded([5, 6, 7, 8, 9], labels=[-100, -100, -100, -100, 9]),
            Encoded([12, 13, 14, 15, 16, 17, 18, 19], labels=[-100] * 6 + [18, 19])]
    batch = collate(rows, pad_id=0)
    full_loss, full_n, full_logits = batch_loss(model, batch, "generation")
    trim_loss, trim_n, trim_logits = batch_loss(model, batch, "generation", trim_logits=True)
    assert full_n == trim_n == 7
    assert trim_logits.shape[1] == 8 - 3 + 1 < full_logits.shape[1]  # from the position before the first target
    torch.testing.assert_close(trim_loss, full_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trim_logits, full_logits[:, 2:], atol=1e-5, rtol=1e-5)


def test_task_spec_from_columns():
    from prefixtune.data.errors import DataError
    from prefixtune.train.loop import task_spec

    e2e = task_spec(TrainConfig(task="e2e"))
    assert e2e.kind == "generation" and e2e.template == "{mr}\n"
    # a built-in task with any column given is described by the columns, not the built-in spec
    renamed = task_spec(TrainConfig(task="e2e", target_column="text", template="{meaning}\n"))
    assert (renamed.target_column, renamed.template) == ("text", "{meaning}\n")
    gen = task_spec(TrainConfig(task="qa", input_column="question", target_column="answer"))
    assert (gen.kind, gen.template, gen.target_column, gen.name) == ("generation", "{question}\n", "answer", "qa")
    templated = task_spec(TrainConfig(task="qa", template="Q: {question}\nA:", target_column="answer"))
    assert templated.template == "Q: {question}\nA:"
    cls = task_spec(TrainConfig(task="topic", label_column="topic"))
    assert (cls.kind, cls.template, cls.label_column, cls.text_columns) == ("classification", "{text}", "topic", ("text",))
    named = task_spec(TrainConfig(task="topic", label_column="topic", input_column="body"))
    assert (named.template, named.text_columns) == ("{body}", ("body",))
    assert task_spec(TrainConfig(task="topic", label_column="y", template="{a} {b}")).text_columns == ()
    refs = task_spec(TrainConfig(task="e2e-gem", input_column="meaning_representation", target_column="target",
                                 references_column="references"))
    assert (refs.template, refs.target_column, refs.references_column) == ("{meaning_representation}\n", "target",
                                                                            "references")
    for bad in (dict(input_column="q"), dict(target_column="a"), dict(references_column="r"), {}):
        with pytest.raises(DataError, match="not built in"):
            task_spec(TrainConfig(task="custom", **bad))


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps="10"), "steps must be an int, got '10'"),
    (dict(steps=True), "steps must be an int, got True"),
    (dict(lr="1e-3"), "lr must be a float or one of auto, got '1e-3' (a number in quotes, or YAML's 1e-3"),
    (dict(bf16="no"), "bf16 must be true or false or one of auto, got 'no'"),
    (dict(stop="\n"), "stop must be a list of str"),
    (dict(patience=1.5), "patience must be an int or none, got 1.5"),
    (dict(adapter={"prefx_length": 3}), "adapter: method prefix has no option 'prefx_length' (did you mean "
                                        "'prefix_length'?)"),
    (dict(method="prompt", adapter={"prefix_length": 3}), "adapter: method prompt has no option 'prefix_length'"),
    (dict(adapter={"hidden_size": "512"}), "adapter.hidden_size must be an int, got '512'"),
    (dict(adapter={"prefix_length": 0}), "prefix_length must be a positive integer"),
])
def test_train_config_checks_types_and_the_methods_options(kwargs, message):
    """Before anything loads: each field against its type, the adapter against the method's config."""
    import re

    from prefixtune.core.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**kwargs)
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        TrainConfig.from_dict({"stepz": 3})


def test_train_config_takes_what_it_always_took():
    """ints for floats, lists for tuples, None for a composed config's flat option (the default),
    a sub-config as a mapping: what saved run directories and comparison files hold."""
    cfg = TrainConfig(lr=1, warmup_ratio=0, adapter={"exclude_layers": [0], "locations": ["decoder_self"]})
    assert cfg.lr == 1 and TrainConfig.from_dict(cfg.to_dict()) == cfg
    TrainConfig(method="prompt", adapter={"num_virtual_tokens": 3, "num_labels": None, "pooling": "mean"})
    TrainConfig(method="ptuning_v2", adapter={"head": {"num_labels": 3}, "prefix_length": 4})
    TrainConfig(method="lora", adapter={"r": 4, "target_modules": ["q_proj"]})


def test_training_on_a_datasets_object_equals_training_on_its_files(tiny_dir, e2e_dir, tmp_path):
    """In Python, ``data`` may be a DatasetDict: the same adapter as from the files it was made of, and a
    config.json that records what it was (the object itself cannot go into JSON)."""
    import datasets

    from prefixtune.data.files import read_file

    given = datasets.DatasetDict({"train": datasets.Dataset.from_list(read_file(e2e_dir / "train.csv")),
                                  "validation": datasets.Dataset.from_list(read_file(e2e_dir / "dev.csv"))})
    for name, data in (("files", str(e2e_dir)), ("object", given)):
        train(config(tiny_dir, e2e_dir, tmp_path / name, data=data, steps=2, eval_every=0, save_every=10,
                     eval_limit=2))
    files, obj = (adapter_state(tmp_path / name, tiny_dir) for name in ("files", "object"))
    assert files.keys() == obj.keys() and all(torch.equal(files[k], obj[k]) for k in files)
    saved = json.loads((tmp_path / "object" / "config.json").read_text())["data"]
    assert saved.startswith("<in-memory datasets object: DatasetDict")


@pytest.fixture(scope="module")
def topics_dir(tmp_path_factory):
    """Three classes, each given away by one word."""
    where = tmp_path_factory.mktemp("topics")
    words = {"sport": "football", "food": "pasta", "music": "guitar"}
    for split, n in (("train", 48), ("dev", 12)):
        rows = ["text\ttopic"]
        for i in range(n):
            topic = list(words)[i % 3]
            rows.append(f"item {i} is about {words[topic]}\t{topic}")
        (where / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return where


@pytest.fixture(scope="module")
def still_bert_dir(tmp_path_factory):
    """The tiny BERT without dropout, so a training step is deterministic."""
    return save_tiny_bert(tmp_path_factory.mktemp("still-bert"), hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)


def test_classification_loss_oracle_three_labels_and_train_limit(still_bert_dir, topics_dir, tmp_path, recording,
                                                                  logged):
    """A 3-class task gets a 3-way head; with ``train_limit`` only that many examples are encoded; step 1's
    logged loss is the mean cross-entropy of its batch, computed here from the recorded initial parameters."""
    import prefixtune as pt
    from prefixtune.data.batching import collate, encode, length_grouped_batches
    from prefixtune.data.tasks import load_task
    from prefixtune.train.loop import task_spec

    tiny_bert_dir = still_bert_dir
    cfg = TrainConfig(model=str(tiny_bert_dir), task="topics", data=str(topics_dir), label_column="topic",
                      method="ptuning_v2", adapter={"prefix_length": 2, "pooling": "mean", "head_dropout": 0.0, "dropout": 0.0},
                      steps=2, batch_size=8, lr=1e-2, eval_every=0, eval_limit=None, out=str(tmp_path / "run"),
                      max_length=16, train_limit=20, max_grad_norm=0.0)
    train(cfg)
    assert any(m.startswith("20 training examples") for m in logged()), logged()
    opt = recording[-1]
    tok = T.AutoTokenizer.from_pretrained(tiny_bert_dir)
    task = load_task(task_spec(cfg), "train", data=cfg.data, limit=20)
    assert task.spec.labels == ("food", "music", "sport")
    encoded, _ = encode(tok, task.examples, cfg.max_length, "classification")
    index = length_grouped_batches([len(e.input_ids) for e in encoded], 8, cfg.seed, 0)[0]
    batch = collate([encoded[i] for i in index], tok.pad_token_id)
    pm = pt.wrap(T.AutoModel.from_pretrained(tiny_bert_dir), pt.PTuningV2Config(**cfg.adapter, num_labels=3))
    with torch.no_grad():
        for p, value in zip(pm.trainable_parameters(), opt.initial, strict=True):
            p.copy_(value)
    pm.train()
    logits = pm(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert logits.shape == (len(index), 3)
    want = torch.nn.functional.cross_entropy(logits.double(), batch["labels"])
    want.backward()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_loss"] == pytest.approx(float(want.detach()), rel=1e-5)
    for got, p in zip(opt.grads[0], pm.trainable_parameters(), strict=True):
        torch.testing.assert_close(got, p.grad.float(), atol=1e-7, rtol=1e-4)


def test_batch_loss_of_a_batch_without_targets_is_zero(tiny_dir):
    import prefixtune as pt
    from prefixtune.data.batching import Encoded, collate
    from prefixtune.evaluation.loss import batch_loss

    pm = pt.wrap(T.AutoModelForCausalLM.from_pretrained(tiny_dir), pt.PrefixConfig(prefix_length=2, hidden_size=8))
    batch = collate([Encoded([5, 6, 7], labels=[-100] * 3), Encoded([8, 9], labels=[-100] * 2)], pad_id=0)
    for trim in (False, True):
        loss, n, _ = batch_loss(pm, batch, "generation", trim_logits=trim)
        assert float(loss.detach()) == 0.0 and n == 0


def test_best_adapter_and_early_stopping_follow_the_scores(tiny_dir, e2e_dir, tmp_path, monkeypatch, logged):
    """Evaluation scores scripted 50, 60, 55, 58 at steps 2, 4, 6, 8: the best stays step 4's, two
    evaluations without improvement stop the run at step 8 (patience 2), and the final evaluation (59)
    does not replace the best."""
    import prefixtune.evaluation.evaluate as ev

    scripted = iter([50.0, 60.0, 55.0, 58.0, 59.0, 57.0])  # the last for the rerun's re-scoring
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: ({"loss": 1.0, "bleu": next(scripted)}, []))
    cfg = config(tiny_dir, e2e_dir, tmp_path / "run", steps=12, eval_every=2, save_every=2, patience=2)
    result = train(cfg)
    assert result["steps_done"] == 8 and result["best"] == 60.0 and result["best_step"] == 4
    assert any("early stopping at step 8" in m for m in logged())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 9))
    assert [(r["step"], r["bleu"]) for r in rows if "split" in r] == [(2, 50.0), (4, 60.0), (6, 55.0), (8, 58.0),
                                                                     (8, 59.0)]
    best, final = adapter_state(tmp_path / "run", tiny_dir, "best"), adapter_state(tmp_path / "run", tiny_dir)
    assert any(not torch.equal(best[k], final[k]) for k in best), "best/ is step 4's adapter, adapter/ step 8's"
    # a rerun of a stopped run trains no more
    again = train(cfg)
    assert again["steps_done"] == 8 and again["best"] == 60.0 and again["best_step"] == 4


def test_metrics_rows_and_token_counts(tiny_dir, e2e_dir, tmp_path):
    from prefixtune.data.batching import collate, encode, length_grouped_batches
    from prefixtune.data.tasks import load_task
    from prefixtune.train.loop import task_spec

    cfg = config(tiny_dir, e2e_dir, tmp_path / "run", eval_every=0, steps=3)
    result = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    assert all(set(r) == {"step", "train_loss", "grad_norm", "lr", "tokens_per_s"} and r["tokens_per_s"] > 0
               for r in train_rows)
    tok = T.AutoTokenizer.from_pretrained(tiny_dir)
    encoded, _ = encode(tok, load_task(task_spec(cfg), "train", data=cfg.data).examples, cfg.max_length, "generation")
    batches = length_grouped_batches([len(e.input_ids) for e in encoded], cfg.batch_size, cfg.seed, 0)[:3]
    want = sum(int(collate([encoded[i] for i in b], 0)["attention_mask"].sum()) for b in batches)
    assert result["train_tokens"] == want


def test_training_a_prompt_initialized_from_text(tiny_dir, e2e_dir, tmp_path):
    """The run's tokenizer reaches the method: a prompt initialized from text trains (and starts as
    the embeddings of that text)."""
    cfg = config(tiny_dir, e2e_dir, tmp_path / "run", method="prompt", eval_every=0, steps=1, lr=0.0,
                 adapter={"num_virtual_tokens": 2, "init": "text", "init_text": "table to text"})
    train(cfg)
    tok = T.AutoTokenizer.from_pretrained(tiny_dir)
    ids = tok("table to text", add_special_tokens=False)["input_ids"][:2]
    embeddings = T.AutoModelForCausalLM.from_pretrained(tiny_dir).get_input_embeddings().weight[ids]
    torch.testing.assert_close(adapter_state(tmp_path / "run", tiny_dir)["prompt.embedding"], embeddings.detach())
