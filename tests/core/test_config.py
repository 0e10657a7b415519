import pytest

from prefixtune import ConfigError, PrefixConfig


def test_defaults_follow_the_paper():
    c = PrefixConfig()
    assert (c.prefix_length, c.reparameterization, c.hidden_size) == (10, "mlp", 512)
    assert c.locations == ("encoder_self", "decoder_self", "cross")
    assert c.position_mode == "shifted"


def test_json_round_trip():
    c = PrefixConfig(prefix_length=5, reparameterization="direct", exclude_layers=[3, 1], locations=["cross"])
    assert c.exclude_layers == (1, 3)
    assert PrefixConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kwargs, field", [
    (dict(prefix_length=0), "prefix_length"),
    (dict(reparameterization="lstm"), "reparameterization"),
    (dict(dropout=1.5), "dropout"),
    (dict(locations=("decoder",)), "locations"),
    (dict(position_mode="absolute"), "position_mode"),
    (dict(exclude_layers=(-1,)), "exclude_layers"),
    (dict(hidden_size=0), "hidden_size"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        PrefixConfig(**kwargs)


def test_unknown_fields_are_named():
    with pytest.raises(ConfigError, match="prefix_len"):
        PrefixConfig.from_dict({"prefix_len": 3})


# ---------------------------------------------------------------- composed configs and the registry

def test_ptuning_v2_is_a_prefix_config_and_a_head_config_given_flat_or_nested():
    import prefixtune as pt

    flat = pt.PTuningV2Config(prefix_length=8, gate=True, num_labels=3, pooling="mean", head_dropout=0.2, dropout=0.3)
    nested = pt.PTuningV2Config(prefix=pt.PrefixConfig(prefix_length=8, gate=True, reparameterization="direct",
                                                       dropout=0.3),
                                head=pt.HeadConfig(num_labels=3, pooling="mean", dropout=0.2))
    assert flat == nested
    assert flat.prefix.dropout == 0.3 and flat.head.dropout == 0.2  # "dropout" is the prefix's
    assert flat.prefix.position_mode == "natural"  # PrefixConfig's own default for gated prefixes
    assert pt.PTuningV2Config().prefix == PrefixConfig(prefix_length=16, reparameterization="direct", dropout=0.1)
    assert pt.PTuningV2Config.from_dict(flat.to_dict()) == flat
    assert pt.PTuningV2Config.from_dict(nested.to_dict()) == nested


def test_configs_saved_flat_by_earlier_versions_still_load():
    import prefixtune as pt

    old_v2 = {"method": "ptuning_v2", "prefix_length": 4, "reparameterization": "direct", "hidden_size": 512,
              "dropout": 0.1, "init_std": 0.02, "exclude_layers": [], "position_mode": "shifted",
              "task": "token-classification", "num_labels": 5, "pooling": "cls", "head_dropout": 0.0,
              "init": "random", "init_text": None, "gate": False}
    cfg = pt.PTuningV2Config.from_dict(old_v2)
    assert cfg.prefix.prefix_length == 4 and cfg.head == pt.HeadConfig(task="token-classification", num_labels=5,
                                                                        dropout=0.0)
    old_prompt = {"method": "prompt", "num_virtual_tokens": 3, "num_labels": None, "pooling": "mean",
                  "head_dropout": 0.1, "init": "random", "init_text": None, "label_words": [], "init_range": 0.5,
                  "encoder": "none", "encoder_hidden_size": 512, "dropout": 0.0}
    assert pt.PromptConfig.from_dict(old_prompt) == pt.PromptConfig(num_virtual_tokens=3)
    assert pt.PromptConfig.from_dict({**old_prompt, "num_labels": 2}).head == pt.HeadConfig(num_labels=2,
                                                                                            pooling="mean")


@pytest.mark.parametrize("make, match", [
    (lambda pt: pt.PTuningV2Config(prefix_lenght=3), "unknown PTuningV2Config option 'prefix_lenght'"),
    (lambda pt: pt.PTuningV2Config(prefix=pt.PrefixConfig(), prefix_length=3), "either prefix= or its fields"),
    (lambda pt: pt.PTuningV2Config(head={"num_labels": 0}), "num_labels"),
    (lambda pt: pt.PTuningV2Config(head="cls"), "must be a HeadConfig"),
    (lambda pt: pt.PromptConfig(pooling="max"), "pooling"),
    (lambda pt: pt.HeadConfig(task="regression"), "task"),
])
def test_bad_composed_configs_name_the_problem(make, match):
    import prefixtune as pt

    with pytest.raises(ConfigError, match=match):
        make(pt)


def test_a_prompt_has_a_head_only_when_asked():
    import prefixtune as pt

    assert pt.PromptConfig().head is None
    assert pt.PromptConfig(num_labels=None).head is None
    assert pt.PromptConfig(num_labels=4).head == pt.HeadConfig(num_labels=4, pooling="mean")


def test_every_registered_method_builds_its_parts_and_training_lists_them():
    from prefixtune.methods import REGISTRY
    from prefixtune.train.methods import TRAIN_METHODS, methods_for
    from prefixtune.train.config import TrainConfig

    assert set(REGISTRY) <= set(TRAIN_METHODS) and set(TRAIN_METHODS) - set(REGISTRY) == {"lora", "full"}
    for name, method in REGISTRY.items():
        assert method.config().method == name
        assert set(method.tasks) <= {"generation", "classification"}
    assert "prefix" not in methods_for("classification") and "ptuning_v2" not in methods_for("generation")
    with pytest.raises(ConfigError, match="prefix, prompt, ptuning_v2, lora, full"):
        TrainConfig(method="prefix-tuning")


def test_options_are_the_flat_keys_the_constructor_routes():
    """A config's options (the --set keys) with the types, defaults and help of the fields they
    reach: composed configs list their parts' fields flat, with this method's defaults."""
    import prefixtune as pt
    from typing import Literal

    prefix = PrefixConfig.options()
    assert list(prefix) == [f for f in PrefixConfig.__dataclass_fields__ if f != "method"]
    assert prefix["reparameterization"].type == Literal["mlp", "direct"] and prefix["prefix_length"].default == 10
    assert "virtual key/value positions" in prefix["prefix_length"].help
    v2 = pt.PTuningV2Config.options()
    assert v2["prefix_length"].default == 16 and v2["prefix_length"].part == "prefix"  # the paper's, not 10
    assert v2["dropout"].part == "prefix" and v2["head_dropout"].part == "head"  # as the constructor routes them
    assert v2["pooling"].type == Literal["cls", "mean", "last"] | None  # None: the part's default
    prompt = pt.PromptConfig.options()
    assert prompt["pooling"].default == "mean" and prompt["num_labels"].optional_part  # giving it adds a head
    assert "head" not in prompt and "prefix" not in v2
    for name, opt in v2.items():  # every option reaches the field it names
        value = opt.default if opt.default is not None else "natural"
        cfg = pt.PTuningV2Config(**{name: value})
        part = getattr(cfg, opt.part)
        assert getattr(part, "dropout" if name == "head_dropout" else name) == value, name
