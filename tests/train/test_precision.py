"""``--bf16`` in the training loop: the frozen base stored in bf16, what trains kept in fp32 (weights,
gradients, AdamW moments), and the same first step as the fp32 run to bf16 precision; evaluation of
a bf16 run loads its base in bf16 too."""

from __future__ import annotations

import json

import pytest
import torch

from prefixtune.train import loop, precision
from prefixtune.train.commands import _load_run
from prefixtune.train.config import TrainConfig
from prefixtune.train.loop import train

GENERATION = [("prefix", {"prefix_length": 4, "hidden_size": 16}), ("prompt", {"num_virtual_tokens": 3}),
              ("lora", {"r": 2}), ("full", {})]


class Spy:
    """Records the base model each run loads and the optimizer it builds (its state after the steps)."""

    def __init__(self, monkeypatch):
        self.bases, self.optimizers, self.grads = [], [], []
        real_load, spy = loop.load_model, self

        def load(*args, **kwargs):
            base, tok = real_load(*args, **kwargs)
            spy.bases.append(base)
            return base, tok

        class AdamW(torch.optim.AdamW):
            def __init__(self, params, **kw):
                params = list(params)
                super().__init__(params, **kw)
                self.initial = [p.detach().clone() for p in params]
                spy.optimizers.append(self)

            def step(self, closure=None):
                spy.grads.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
                return super().step(closure)

        monkeypatch.setattr(loop, "load_model", load)
        monkeypatch.setattr(torch.optim, "AdamW", AdamW)


def run_config(tiny_dir, e2e_dir, out, **kw):
    base = dict(model=str(tiny_dir), task="e2e", data=str(e2e_dir), steps=2, batch_size=4, lr=1e-2, eval_every=0,
                save_every=2, eval_limit=2, max_new_tokens=4, out=str(out), max_grad_norm=0.0)
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("method,adapter", GENERATION)
def test_bf16_stores_the_base_in_bf16_and_trains_in_fp32(tiny_dir, e2e_dir, tmp_path, monkeypatch, method, adapter):
    spy = Spy(monkeypatch)
    train(run_config(tiny_dir, e2e_dir, tmp_path / "run", method=method, adapter=adapter, bf16=True))
    base, opt = spy.bases[0], spy.optimizers[0]
    frozen = {p.dtype for p in base.parameters() if not p.requires_grad}
    trained = [p for g in opt.param_groups for p in g["params"]]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert all(opt.state[p]["exp_avg"].dtype == torch.float32 for p in trained)
    assert all(g.dtype == torch.float32 for g in spy.grads[0])
    if method == "full":  # fp32 master weights, bf16 autocast
        assert all(p.dtype == torch.float32 for p in base.parameters())
    else:
        assert frozen == {torch.bfloat16}


def first_step(tiny_dir, e2e_dir, out, monkeypatch, **kw):
    """The loss and gradients of step 1 of a run (``steps=1``) from the same initial adapter."""
    spy = Spy(monkeypatch)
    train(run_config(tiny_dir, e2e_dir, out, steps=1, **kw))
    loss = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    return loss, spy.optimizers[0].initial, spy.grads[0]


@pytest.mark.parametrize("method,adapter", GENERATION)
def test_bf16_first_step_equals_fp32_to_bf16_precision(tiny_dir, e2e_dir, tmp_path, monkeypatch, method, adapter):
    """Same seed, so the same initial adapter and batch: the bf16 run's loss is the fp32 run's to 1%,
    and its gradient points the same way (cosine > 0.99) with a norm within 5%."""
    loss32, init32, grads32 = first_step(tiny_dir, e2e_dir, tmp_path / "fp32", monkeypatch, method=method,
                                         adapter=adapter)
    loss16, init16, grads16 = first_step(tiny_dir, e2e_dir, tmp_path / "bf16", monkeypatch, method=method,
                                         adapter=adapter, bf16=True)
    exact = method in ("prefix", "prompt")  # PEFT draws LoRA's A in the base's dtype, then casts it to fp32
    for a, b in zip(init32, init16, strict=True):
        torch.testing.assert_close(a, b, rtol=0 if exact else 2 ** -8, atol=0)
    assert loss16 == pytest.approx(loss32, rel=1e-2)
    g32 = torch.cat([g.flatten() for g in grads32])
    g16 = torch.cat([g.flatten() for g in grads16])
    assert g32.norm() > 0
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.99
    assert float(g16.norm() / g32.norm()) == pytest.approx(1.0, abs=0.05)


def test_a_bf16_run_is_evaluated_in_bf16(tiny_dir, e2e_dir, tmp_path):
    run = tmp_path / "run"
    train(run_config(tiny_dir, e2e_dir, run, bf16=True))
    model = _load_run(run, "best").model
    assert {p.dtype for n, p in model.named_parameters() if not n.startswith("prefix.")} == {torch.bfloat16}


def test_ptuning_v2_trains_on_a_bf16_encoder(tiny_bert_dir, sentiment_dir, tmp_path):
    cfg = TrainConfig(model=str(tiny_bert_dir), task="sst2", data=str(sentiment_dir), method="ptuning_v2",
                      adapter={"prefix_length": 2, "pooling": "mean"}, steps=40, batch_size=16, lr=3e-2,
                      eval_every=0, eval_limit=None, out=str(tmp_path / "run"), max_length=16, bf16=True)
    assert train(cfg)["scores"]["accuracy"] == 100.0


def test_precision_words():
    assert precision.describe("prefix", False) == "fp32"
    assert precision.describe("prefix", True) == "bf16 base, fp32 adapter"
    assert precision.describe("lora", True) == "bf16 base, fp32 trainable weights"
    assert precision.describe("full", True) == "fp32 weights, bf16 autocast"


def test_the_trimmed_lm_head_gets_a_contiguous_input(tiny_dir):
    """With ``logits_to_keep`` transformers hands the head a strided view, which a linear layer runs
    as a batched matmul over copies of the weight (several times slower in bf16 on CPU); after
    :func:`contiguous_head_input` the head sees a contiguous tensor and the logits are the same."""
    import transformers as T

    from prefixtune.hf.boundary import contiguous_head_input

    model = T.AutoModelForCausalLM.from_pretrained(tiny_dir)
    seen = []
    ids = torch.randint(3, 90, (2, 7))
    want = model(input_ids=ids).logits[:, -3:]
    assert contiguous_head_input(model) and contiguous_head_input(model)  # once, however often asked
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    got = model(input_ids=ids, logits_to_keep=3).logits
    assert seen == [True] and len(model.get_output_embeddings()._forward_pre_hooks) == 2
    torch.testing.assert_close(got, want)


def test_training_hooks_the_lm_head(tiny_dir, e2e_dir, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    train(run_config(tiny_dir, e2e_dir, tmp_path / "run", steps=1))
    assert spy.bases[0].get_output_embeddings()._prefixtune_contiguous


@pytest.fixture
def speedup(monkeypatch):
    """Make bf16 matmuls on the CPU measure ``speedup.value`` times float32's speed (None: fail if probed)."""
    from prefixtune.runtime import hardware

    class Speedup:
        value: float | None = None

        def __call__(self):
            assert self.value is not None, "probed although nothing asked for bf16"
            return self.value

    fake = Speedup()
    monkeypatch.setattr(hardware, "bf16_speedup", fake)
    return fake


@pytest.mark.parametrize("measured, chosen", [(2.4, True), (0.012, False), (1.1, False)])
def test_auto_takes_bf16_only_where_it_measures_faster(speedup, caplog, measured, chosen):
    speedup.value = measured
    caplog.set_level("INFO", logger="prefixtune")
    assert precision.resolve("auto", "cpu") is chosen
    assert f"bf16 auto: {'bf16' if chosen else 'float32'} (a bf16 matmul runs at {measured:.2g}x" in caplog.text


def test_false_never_probes(speedup):
    assert precision.resolve(False, "cpu") is False


@pytest.mark.parametrize("measured, warned", [(0.012, True), (2.4, False)])
def test_an_explicit_bf16_is_kept_and_warned_about_where_it_is_slower(speedup, caplog, measured, warned):
    speedup.value = measured
    caplog.set_level("WARNING", logger="prefixtune")
    assert precision.resolve(True, "cpu") is True
    assert ("0.012x float32's speed" in caplog.text and "emulated and slow" in caplog.text) is warned


def frozen_dtypes(model):
    return {p.dtype for n, p in model.named_parameters() if not n.startswith("prefix.")}


@pytest.mark.parametrize("measured, dtype", [(2.4, torch.bfloat16), (0.012, torch.float32)])
def test_a_run_with_bf16_auto_trains_and_evaluates_in_what_the_machine_runs_fast(
        tiny_dir, e2e_dir, tmp_path, monkeypatch, speedup, measured, dtype):
    speedup.value = measured
    spy = Spy(monkeypatch)
    run = tmp_path / "run"
    result = train(run_config(tiny_dir, e2e_dir, run, bf16="auto"))
    assert {p.dtype for p in spy.bases[0].parameters() if not p.requires_grad} == {dtype}
    assert all(p.dtype == torch.float32 for g in spy.optimizers[0].param_groups for p in g["params"])
    assert result["bf16"] is (dtype == torch.bfloat16)
    assert json.loads((run / "config.json").read_text())["bf16"] == "auto"  # the request
    assert precision.recorded(run) is (dtype == torch.bfloat16)  # and what it became, once for the run
    model = _load_run(run, "best").model
    assert frozen_dtypes(model) == {dtype}


def test_a_resumed_run_keeps_the_precision_its_start_chose(tiny_dir, e2e_dir, tmp_path, monkeypatch, speedup):
    """Started where bf16 is fast, stopped, resumed (and scored) where bf16 is slow: bf16 throughout."""
    run = tmp_path / "run"
    speedup.value = 2.4
    spy = Spy(monkeypatch)
    assert train(run_config(tiny_dir, e2e_dir, run, bf16="auto", save_every=1), stop_after=1) == {"stopped_at": 1}
    speedup.value = 0.012
    result = train(run_config(tiny_dir, e2e_dir, run, bf16="auto", save_every=1))
    assert [frozen_dtypes(b) for b in spy.bases] == [{torch.bfloat16}] * 2
    assert result["bf16"] is True and result["steps_done"] == 2
    model = _load_run(run, "best").model
    assert frozen_dtypes(model) == {torch.bfloat16}


@pytest.mark.parametrize("measured, resumes", [(2.4, True), (0.012, False)])
def test_a_run_saved_with_bf16_true_resumes_under_auto_where_auto_decides_bf16(
        tiny_dir, e2e_dir, tmp_path, speedup, measured, resumes):
    """A run from before precision.json (explicit bf16: true), rerun with bf16: auto: the same run
    where auto decides bf16, else refused by name."""
    from prefixtune.core.config import ConfigError

    run = tmp_path / "run"
    speedup.value = measured
    train(run_config(tiny_dir, e2e_dir, run, bf16=True, steps=2, save_every=1), stop_after=1)
    (run / precision.FILE).unlink()  # as a run written before the record existed
    if resumes:
        assert train(run_config(tiny_dir, e2e_dir, run, bf16="auto", steps=2, save_every=1))["steps_done"] == 2
        assert precision.recorded(run) is True
    else:
        with pytest.raises(ConfigError, match="bf16: True -> 'auto'"):
            train(run_config(tiny_dir, e2e_dir, run, bf16="auto", steps=2, save_every=1))


@pytest.mark.parametrize("saved, wanted, record, measured, same", [
    (True, True, None, None, True), (True, False, None, None, False),
    ("auto", True, True, None, True), ("auto", False, True, None, False),   # auto: what the run recorded
    (True, "auto", None, 2.4, True), (True, "auto", None, 0.012, False),    # no record: what auto decides here
    ("auto", "auto", False, 2.4, True),
])
def test_same_choice_compares_what_the_settings_decide(tmp_path, speedup, saved, wanted, record, measured, same):
    speedup.value = measured
    if record is not None:
        (tmp_path / precision.FILE).write_text(json.dumps({"bf16": record}))
    assert precision.same_choice(tmp_path, saved, wanted, "cpu") is same


@pytest.mark.parametrize("method, bf16, word", [("prefix", True, "bf16"), ("lora", True, "bf16"),
                                                ("full", True, "bf16 autocast"), ("prompt", False, "fp32")])
def test_labels(method, bf16, word):
    assert precision.label(method, bf16) == word
