"""Prompt tuning and P-tuning (input prompts) on every family, against the bare model as oracle."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from tiny import DECODERS, ENCODERS, FAMILIES, SEQ2SEQ, pad_token, tiny_model, token_ids

L = 3


def make(family, **cfg):
    cfg.setdefault("num_virtual_tokens", L)
    return pt.wrap(tiny_model(family), pt.PromptConfig(**cfg)).eval()


def with_decoder(family, kw, rows):
    if family in SEQ2SEQ:
        kw["decoder_input_ids"] = token_ids(family, rows, 4, seed=9)
    return kw


@pytest.mark.parametrize("encoder", ["none", "mlp", "lstm"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_equals_bare_model_on_concatenated_embeddings(family, encoder):
    pm = make(family, encoder=encoder, encoder_hidden_size=16)
    ids = token_ids(family, 2, 6)
    kw = with_decoder(family, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 2)
    got = pm(**kw)
    with torch.no_grad():
        prompt = pm.prompt()
    base = pm.unwrap()
    embeds = base.get_input_embeddings()(ids)
    ref = dict(kw)
    ref.pop("input_ids")
    ref["inputs_embeds"] = torch.cat([prompt.expand(2, -1, -1), embeds], 1)
    ref["attention_mask"] = torch.ones(2, L + 6, dtype=torch.long)
    want = base(**ref).logits
    if family not in SEQ2SEQ:
        want = want[:, L:]
    torch.testing.assert_close(got.logits, want, atol=2e-5, rtol=1e-4)
    assert got.logits.shape[1] == (4 if family in SEQ2SEQ else 6)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", DECODERS + ENCODERS + ("t5",))
def test_padded_rows_equal_rows_alone(family, side):
    pm = make(family)
    rows = [token_ids(family, 1, n, seed=n)[0] for n in (6, 3, 5)]
    n = 6
    ids = torch.full((3, n), pad_token(family))
    mask = torch.zeros(3, n, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(n - len(r), n) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    kw = with_decoder(family, {"input_ids": ids, "attention_mask": mask}, 3)
    batched = pm(**kw).logits
    for i, r in enumerate(rows):
        one = {"input_ids": r[None], "attention_mask": torch.ones(1, len(r), dtype=torch.long)}
        if family in SEQ2SEQ:
            one["decoder_input_ids"] = kw["decoder_input_ids"][i:i + 1]
            torch.testing.assert_close(batched[i], pm(**one).logits[0], atol=2e-5, rtol=1e-4)
        else:
            torch.testing.assert_close(batched[i][mask[i].bool()], pm(**one).logits[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_labels_never_cover_virtual_tokens(family):
    pm = make(family)
    ids = token_ids(family, 2, 6)
    labels = ids.clone()
    labels[:, :2] = -100
    out = pm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    logits = out.logits
    if family in DECODERS:  # shifted next-token loss over the real tokens only
        want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    else:
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_token_type_ids_move_with_their_tokens(family):
    """Oracle: the bare model on ``[prompt; embeddings]`` with token types ``[0]*l + tt``
    (a right-padded row included: its pads keep type 0 and stay masked)."""
    pm = make(family)
    if family == "roberta":
        pm.base_model.roberta.embeddings.token_type_embeddings = torch.nn.Embedding(2, 32)
        pm.base_model.config.type_vocab_size = 2
    ids = token_ids(family, 2, 6)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    tt = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]])
    got = pm(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
    untyped = pm(input_ids=ids, attention_mask=mask).logits
    assert (got[0] - untyped[0]).abs().max() > 1e-4, "the token types must matter in this test"
    # a left-padded row (the prompt goes after its pads) equals the row alone
    left_ids = torch.cat([torch.full((1, 2), pad_token(family)), ids[:1, :4]], 1)
    left = pm(input_ids=left_ids, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]),
              token_type_ids=torch.tensor([[0, 0, 0, 1, 1, 1]])).logits
    alone = pm(input_ids=ids[:1, :4], token_type_ids=torch.tensor([[0, 1, 1, 1]])).logits
    torch.testing.assert_close(left[0, 2:], alone[0], atol=2e-5, rtol=1e-4)
    with torch.no_grad():
        prompt = pm.prompt()
    base = pm.unwrap()
    ref = base(inputs_embeds=torch.cat([prompt.expand(2, -1, -1), base.get_input_embeddings()(ids)], 1),
               attention_mask=torch.cat([torch.ones(2, L, dtype=torch.long), mask], 1),
               token_type_ids=torch.cat([torch.zeros(2, L, dtype=torch.long), tt], 1)).logits[:, L:]
    torch.testing.assert_close(got[0], ref[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got[1, :4], ref[1, :4], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "bart"])
def test_generate_first_step_and_padding(family):
    pm = make(family)
    ids, mask = token_ids(family, 2, 5), torch.ones(2, 5, dtype=torch.long)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=pad_token(family), eos_token_id=None)
    out = pm.generate(input_ids=ids, attention_mask=mask, output_scores=True, return_dict_in_generate=True, **kw)
    fwd = {"input_ids": ids, "attention_mask": mask}
    if family in SEQ2SEQ:
        fwd["decoder_input_ids"] = torch.full((2, 1), pm.base_model.generation_config.decoder_start_token_id)
    else:
        assert torch.equal(out.sequences[:, :5], ids), "decoder-only output starts with the prompt ids"
    torch.testing.assert_close(out.scores[0], pm(**fwd).logits[:, -1], atol=1e-5, rtol=1e-4)
    if family in DECODERS:
        padded = torch.cat([torch.full((1, 2), pad_token(family)), ids[1:, :3]], 1)
        pmask = torch.tensor([[0, 0, 1, 1, 1]])
        a = pm.generate(input_ids=padded, attention_mask=pmask, **kw)[:, 5:]
        b = pm.generate(input_ids=ids[1:, :3], attention_mask=torch.ones(1, 3, dtype=torch.long), **kw)[:, 3:]
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["llama", "bert", "t5"])
def test_only_the_prompt_trains(family):
    pm = make(family, encoder="lstm", encoder_hidden_size=16).train()
    ids = token_ids(family, 2, 6)
    kw = with_decoder(family, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}, 2)
    if family in SEQ2SEQ:
        kw["labels"] = kw.pop("decoder_input_ids")
    pm(**kw).loss.backward()
    grads = {n for n, p in pm.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("prompt.") for n in grads)
    assert pm.count_parameters().stored == L * pm.layout.d_model


def test_inits():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 90 + 3 for c in text]}

    model = tiny_model("llama")
    emb = model.get_input_embeddings().weight
    text = pt.wrap(model, pt.PromptConfig(num_virtual_tokens=5, init="text", init_text="abc"), tokenizer=Tok())
    want = emb[torch.tensor([ord(c) % 90 + 3 for c in "abcab"])]
    torch.testing.assert_close(text.prompt.embedding.data, want)
    labels = pt.wrap(tiny_model("llama"), pt.PromptConfig(num_virtual_tokens=4, init="labels", label_words=("no", "yes")),
                     tokenizer=Tok())
    torch.testing.assert_close(labels.prompt.embedding.data[0], emb[torch.tensor([ord("n") % 90 + 3, ord("o") % 90 + 3])].mean(0))
    vocab = pt.wrap(tiny_model("llama"), pt.PromptConfig(num_virtual_tokens=4, init="vocab")).prompt.embedding.data
    assert all(any(torch.equal(row, e) for e in emb) for row in vocab)
    rnd = pt.wrap(tiny_model("llama"), pt.PromptConfig(num_virtual_tokens=4, init_range=0.5)).prompt.embedding.data
    assert rnd.abs().max() <= 0.5
    with pytest.raises(pt.ConfigError, match="tokenizer"):
        pt.wrap(tiny_model("llama"), pt.PromptConfig(init="text", init_text="hi"))


@pytest.mark.parametrize("encoder", ["none", "lstm"])
@pytest.mark.parametrize("family", ["gpt2", "qwen2", "roberta", "bart"])
def test_save_load_and_fold(tmp_path, family, encoder):
    pm = make(family, encoder=encoder, encoder_hidden_size=16)
    ids = token_ids(family, 2, 5)
    kw = with_decoder(family, {"input_ids": ids}, 2)
    want = pm(**kw).logits
    pm.save_pretrained(tmp_path)
    loaded = pt.load(tiny_model(family), tmp_path).eval()
    torch.testing.assert_close(loaded(**kw).logits, want, rtol=0, atol=0)
    assert loaded.prompt.is_folded == (encoder == "none")
    folded = pt.load(tiny_model(family), tmp_path, folded=True).eval()
    torch.testing.assert_close(folded(**kw).logits, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_classification_head_sees_only_real_tokens(family, tmp_path):
    """Prompt + head: the head pools the real tokens; a padded row == the row alone; save/load exact."""
    torch.manual_seed(0)
    base = tiny_model(family).base_model  # the bare encoder/decoder stack, as classification loads it
    pooling = "mean" if family == "bert" else "last"
    pm = pt.wrap(base, pt.PromptConfig(num_virtual_tokens=3, num_labels=3, pooling=pooling, head_dropout=0.0)).eval()
    assert pm.head is not None and pm.prompt is not None
    ids = token_ids(family, 2, 6)
    mask = torch.ones_like(ids)
    ids[1, 4:], mask[1, 4:] = pad_token(family), 0
    both = pm(input_ids=ids, attention_mask=mask).logits
    alone = pm(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
    assert both.shape == (2, 3)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-4)
    # oracle: the head applied by hand to the real positions of the base model's output on [prompt; tokens]
    emb = base.get_input_embeddings()(ids[:1])
    hidden = base(inputs_embeds=torch.cat([pm.prompt()[None], emb], 1)).last_hidden_state[:, 3:]
    expected = pm.head.classifier(hidden.mean(1) if pooling == "mean" else hidden[:, -1])
    torch.testing.assert_close(both[:1], expected, atol=1e-5, rtol=1e-4)
    pm.save_pretrained(tmp_path / "a")
    fresh = tiny_model(family).base_model
    loaded = pt.load(fresh, tmp_path / "a").eval()
    torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, both, rtol=0, atol=0)
    assert pm.count_parameters().trainable == 3 * 32 + 32 * 3 + 3


def _linear(layer, x):
    return x @ layer.weight.double().T + layer.bias.double()


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_prompt_encoders_follow_their_formulas(encoder):
    """P-tuning's encoders: MLP ``L3·relu(L2·relu(L1·e))``; LSTM ``L2·relu(L1·biLSTM(e))``
    (torch's LSTM is the reference for the recurrent part)."""
    from prefixtune.methods.prompt import prompt_embedding

    emb = prompt_embedding(pt.PromptConfig(num_virtual_tokens=4, encoder=encoder, encoder_hidden_size=6), 5).eval()
    with torch.no_grad():
        got = emb().double()
        x = emb.embedding.double()
        if encoder == "lstm":
            x = emb.lstm(emb.embedding[None])[0][0].double()
            assert x.shape == (4, 6)  # two directions of hidden/2
            want = _linear(emb.mlp[2], torch.relu(_linear(emb.mlp[0], x)))
        else:
            h = torch.relu(_linear(emb.mlp[0], x))
            want = _linear(emb.mlp[4], torch.relu(_linear(emb.mlp[2], h)))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert (torch.relu(_linear(emb.mlp[0], x)) == 0).any(), "the test must exercise the ReLU"


@pytest.mark.parametrize("encoder", ["none", "lstm"])
def test_prompt_fold_in_training_mode_drops_dropout(encoder):
    from prefixtune.methods.prompt import prompt_embedding

    emb = prompt_embedding(pt.PromptConfig(num_virtual_tokens=4, encoder=encoder, encoder_hidden_size=6,
                                          dropout=0.5), 5)
    with torch.no_grad():
        want = emb.eval()()
    folded = emb.train().folded()
    assert emb.training and folded.is_folded
    torch.testing.assert_close(folded.eval()(), want, atol=0, rtol=0)


def test_lstm_encoder_runs_over_the_prompt_as_one_sequence():
    """P-tuning's encoder is a 2-layer bidirectional LSTM over the ``l`` prompt positions: every output
    position depends on every input position (in both directions)."""
    from prefixtune.methods.prompt import prompt_embedding

    emb = prompt_embedding(pt.PromptConfig(num_virtual_tokens=4, encoder="lstm", encoder_hidden_size=6), 5).eval()
    assert (emb.lstm.num_layers, emb.lstm.bidirectional, emb.lstm.hidden_size) == (2, True, 3)
    with torch.no_grad():
        before = emb()
        emb.embedding[0] += 1.0
        after_first = emb()
        emb.embedding[0] -= 1.0
        emb.embedding[3] += 1.0
        after_last = emb()
    assert ((after_first - before).abs().amax(-1) > 1e-6).all(), "position 0 reaches every later position"
    assert ((after_last - before).abs().amax(-1) > 1e-6).all(), "position 3 reaches every earlier position"


def test_random_init_is_uniform_in_the_range_and_encoders_are_not_folded():
    from prefixtune.methods.prompt import prompt_embedding

    emb = prompt_embedding(pt.PromptConfig(num_virtual_tokens=50, init_range=0.5), 40)
    x = emb.embedding.detach()
    assert x.min() < -0.4 and x.max() > 0.4 and x.abs().max() <= 0.5
    assert abs(float(x.std()) - 0.5 / 3 ** 0.5) < 0.02
    for encoder in ("mlp", "lstm"):
        enc = prompt_embedding(pt.PromptConfig(num_virtual_tokens=2, encoder=encoder, encoder_hidden_size=4), 6)
        assert not enc.is_folded and enc.folded().is_folded
    assert prompt_embedding(pt.PromptConfig(num_virtual_tokens=2), 6).is_folded


@pytest.mark.parametrize("kwargs, field", [
    (dict(init="labels"), "label_words"), (dict(init="text"), "init_text"), (dict(num_virtual_tokens=0), "num_virtual_tokens"),
    (dict(num_labels=0), "num_labels"), (dict(encoder="gru"), "encoder"), (dict(pooling="max"), "pooling"),
    (dict(dropout=1.0), "dropout"), (dict(init="zeros"), "init"),
])
def test_bad_prompt_configs_name_the_field(kwargs, field):
    with pytest.raises(pt.ConfigError, match=field):
        pt.PromptConfig(**kwargs)


def test_one_label_is_regression():
    pm = pt.wrap(tiny_model("bert"), pt.PromptConfig(num_virtual_tokens=2, num_labels=1))
    ids = token_ids("bert", 2, 5)
    out = pm(input_ids=ids, labels=torch.tensor([0.5, -1.0]))
    assert out.logits.shape == (2, 1)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0])))


def test_base_model_hidden_states_keep_one_position_per_input_token():
    """On a model without an LM head (``BertModel``), ``last_hidden_state`` drops the prompt positions
    and equals the bare model's at the real tokens."""
    import transformers as T

    base = T.BertModel(tiny_model("bert").config).eval()
    pm = pt.wrap(base, pt.PromptConfig(num_virtual_tokens=L)).eval()
    ids = token_ids("bert", 2, 6)
    got = pm(input_ids=ids).last_hidden_state
    with torch.no_grad():
        prompt = pm.prompt()
    bare = pm.unwrap()
    want = bare(inputs_embeds=torch.cat([prompt.expand(2, -1, -1), bare.get_input_embeddings()(ids)], 1)).last_hidden_state
    assert got.shape == (2, 6, 32)
    torch.testing.assert_close(got, want[:, L:], atol=2e-5, rtol=1e-4)


def test_fold_replaces_the_prompt_encoder_and_keeps_outputs():
    pm = make("llama", encoder="lstm", encoder_hidden_size=8)
    ids = token_ids("llama", 2, 5)
    want = pm(input_ids=ids).logits
    assert not pm.prompt.is_folded
    pm.fold()
    assert pm.prompt.is_folded and pm.prompt.lstm is None
    torch.testing.assert_close(pm(input_ids=ids).logits, want, atol=1e-6, rtol=1e-6)
    assert torch.equal(pm(ids).logits, pm(input_ids=ids).logits)  # input_ids may be positional
    mask = torch.ones_like(ids)  # positional like a transformers model's forward: input_ids, attention_mask, ...
    assert torch.equal(pm(ids, mask).logits, pm(input_ids=ids, attention_mask=mask).logits)
    with pytest.raises(TypeError, match="by keyword"):
        pm(ids, mask, *([None] * 6), "an unnamed ninth")


def test_prompt_model_takes_inputs_embeds_instead_of_ids():
    pm = make("llama")
    ids = token_ids("llama", 2, 5)
    embeds = pm.base_model.get_input_embeddings()(ids)
    torch.testing.assert_close(pm(inputs_embeds=embeds).logits, pm(input_ids=ids).logits, atol=1e-6, rtol=1e-6)
