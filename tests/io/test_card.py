"""The model card written next to an adapter: Hub metadata, counts, how to load; a person's README is kept."""

from __future__ import annotations

from huggingface_hub import ModelCard

import prefixtune as pt
from tiny import tiny_model


def test_save_pretrained_writes_a_card_with_metadata_and_counts(tmp_path):
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=3, hidden_size=16))
    pm.add_model_tags(["sft", "trl"])
    pm.save_pretrained(tmp_path, base_model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "prefixtune"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.pipeline_tag == "text-generation"
    assert {"prefixtune", "prefix-tuning", "sft", "trl"} <= set(card.data.tags)
    count = pm.count_parameters()
    assert f"{count.trainable:,} trainable parameters" in card.text and f"stores {count.stored:,}" in card.text
    assert "PrefixModel.from_pretrained" in card.text


def test_a_local_base_path_is_not_hub_metadata_and_heads_name_their_pipeline(tmp_path):
    pm = pt.wrap(tiny_model("bert"), pt.PTuningV2Config(prefix_length=2, num_labels=3))
    pm.save_pretrained(tmp_path, base_model_name=str(tmp_path))
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None and card.data.pipeline_tag == "text-classification"
    assert {"p-tuning-v2"} <= set(card.data.tags)


def test_a_readme_someone_wrote_is_kept_and_ours_is_rewritten(tmp_path):
    pm = pt.wrap(tiny_model("llama"), pt.PromptConfig(num_virtual_tokens=2))
    pm.save_pretrained(tmp_path)
    first = (tmp_path / "README.md").read_text()
    pm.save_pretrained(tmp_path)  # ours: rewritten (same text)
    assert (tmp_path / "README.md").read_text() == first
    (tmp_path / "README.md").write_text("# my notes\n")
    pm.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my notes\n"
    assert pt.load(tiny_model("llama"), tmp_path).adapter_config.num_virtual_tokens == 2
