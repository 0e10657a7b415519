"""Hub names carry a configuration and a revision; the hub's failures become DataErrors that say what to do."""

from __future__ import annotations

import pytest

from prefixtune.data.errors import DataError
from prefixtune.data.hub import HubName, HubUnavailable, load_hub, parse_hub_name


@pytest.mark.parametrize("text, name", [
    ("nyu-mll/glue:sst2", HubName("nyu-mll/glue", "sst2")),
    ("tuetschek/e2e_nlg@refs/convert/parquet", HubName("tuetschek/e2e_nlg", None, "refs/convert/parquet")),
    ("owner/name:cfg.v2@abc123", HubName("owner/name", "cfg.v2", "abc123")),
    ("imdb", HubName("imdb")),
    ("GEM/e2e_nlg", HubName("GEM/e2e_nlg")),
])
def test_hub_names_parse_and_print_back(text, name):
    assert parse_hub_name(text) == name and str(name) == text


@pytest.mark.parametrize("text", ["data/train.csv", "rows.jsonl", "./data", "/abs/data", "~/data", "a/b/c",
                                  "C:\\data\\x", "owner/name:", "owner/name:a b", "owner/name@", ""])
def test_paths_are_not_hub_names(text):
    assert parse_hub_name(text) is None


def test_the_configuration_and_revision_reach_datasets(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or "loaded")
    assert load_hub(HubName("nyu-mll/glue", "rte", "main")) == "loaded"
    assert calls == [(("nyu-mll/glue", "rte"), {"revision": "main"})]


@pytest.mark.parametrize("error, kind, message", [
    (ConnectionError("Couldn't reach 'o/n' on the Hub (LocalEntryNotFoundError)"), HubUnavailable,
     "o/n:c: the hub could not give this data set (ConnectionError: Couldn't reach"),
    (RuntimeError("Dataset scripts are no longer supported, but found n.py"), DataError,
     "name it as NAME@refs/convert/parquet"),
    (ValueError("Config name is missing.\nPlease pick one among the available configs: ['a', 'b']"), DataError,
     "(ValueError: Config name is missing.); name a configuration as owner/name:config"),
])
def test_hub_failures_say_what_to_do(monkeypatch, error, kind, message):
    import datasets

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError) as e:
        load_hub(HubName("o/n", "c"))
    assert type(e.value) is kind and message in str(e.value)


def test_a_missing_data_set_is_unavailable(monkeypatch):
    import datasets

    def fail(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'o/n' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(HubUnavailable, match="doesn't exist on the Hub"):
        load_hub(HubName("o/n"))
