"""End-to-end checks on the bundled pretrained models: SmolLM2-135M (Llama, GQA) and MiniLM-L6 (BERT)."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.bundled.models import load_model

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2():
    try:
        return load_model("smollm2-135m")
    except pt.bundled.ModelNotFoundError as e:  # pragma: no cover - the CI installs the package
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def minilm():
    try:
        return load_model("minilm-l6", task="base")
    except pt.bundled.ModelNotFoundError as e:  # pragma: no cover
        pytest.skip(str(e))


def train_steps(pm, batch, steps, lr):
    opt = torch.optim.AdamW(pm.trainable_parameters(), lr=lr)
    pm.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = pm(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    pm.eval()
    return losses


def test_smollm2_prefix_learns_and_changes_generate(smollm2):
    model, tok = smollm2
    pm = pt.wrap(model, pt.PrefixConfig(prefix_length=8, hidden_size=128))
    layout = pm.layout.location("decoder_self")
    assert (layout.num_layers, layout.num_kv_heads, layout.head_dim) == (30, 3, 64)
    assert pm.count_parameters().stored == 8 * 30 * 2 * 3 * 64
    tok.padding_side = "left"
    prompts = ["name[The Eagle], food[French]\n", "name[Zizzi], area[riverside]\n"]
    target = "The restaurant is great."
    enc = tok([p + target for p in prompts], return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    batch = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}
    query = tok(prompts, return_tensors="pt", padding=True)
    with pm.injection.active(None):
        bare = pm.base_model.generate(**query, max_new_tokens=8, do_sample=False)
    before = pm.generate(**query, max_new_tokens=8, do_sample=False)
    losses = train_steps(pm, batch, steps=6, lr=5e-3)
    assert losses[-1] < 0.7 * losses[0], losses
    after = pm.generate(**query, max_new_tokens=8, do_sample=False)
    assert not torch.equal(after, bare)
    assert not torch.equal(after, before)
    # first generated token's scores equal the forward pass's last logits
    out = pm.generate(**query, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        logits = pm(**query).logits[:, -1]
    torch.testing.assert_close(out.scores[0], logits, atol=1e-4, rtol=1e-4)
    # each left-padded row generates what it generates alone
    for i, p in enumerate(prompts):
        alone = pm.generate(**tok([p], return_tensors="pt"), max_new_tokens=8, do_sample=False)
        assert tok.decode(alone[0], skip_special_tokens=True) == tok.decode(after[i], skip_special_tokens=True)
    pm.unwrap()


def test_minilm_prefix_learns(minilm):
    """Steer MiniLM's mean-pooled sentence embeddings towards a fixed direction with the prefix alone."""
    model, tok = minilm
    torch.manual_seed(0)
    pm = pt.wrap(model, pt.PrefixConfig(prefix_length=8, reparameterization="direct", init_std=0.5))
    assert pm.layout.model_type == "bert"
    assert pm.count_parameters().trainable == 8 * 6 * 2 * 12 * 32
    enc = tok(["a gripping, funny film", "dull and far too long", "a quiet triumph", "nothing works here"],
              return_tensors="pt", padding=True)
    target = torch.nn.functional.normalize(torch.randn(model.config.hidden_size), dim=0)

    def loss_fn():
        hidden = pm(**enc).last_hidden_state  # (B, n, 384)
        m = enc.attention_mask[..., None].float()
        pooled = (hidden * m).sum(1) / m.sum(1)
        return (1 - torch.nn.functional.cosine_similarity(pooled, target[None], dim=-1)).mean()

    with torch.no_grad():
        before = pm(**enc).last_hidden_state
    opt = torch.optim.AdamW(pm.trainable_parameters(), lr=5e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    with torch.no_grad():
        assert (pm(**enc).last_hidden_state - before).abs().max() > 1e-3
        # a right-padded row equals that row alone
        one = tok(["a quiet triumph"], return_tensors="pt")
        alone = pm(**one).last_hidden_state[0]
        torch.testing.assert_close(pm(**enc).last_hidden_state[2, : alone.shape[0]], alone, atol=1e-4, rtol=1e-4)
    pm.unwrap()
