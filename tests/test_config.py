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
