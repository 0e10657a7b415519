"""The model card (``README.md``) written next to a saved adapter, as the Hub shows it.

Its YAML header is built with ``huggingface_hub.ModelCardData`` (``library_name: prefixtune``,
``base_model`` when the base is named by a hub id, tags, the pipeline); the text says what the
adapter is, how many parameters it trains and stores, and how to load it. A README.md that a person
wrote (one without this module's marker) is left alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from prefixtune.io.files import atomic_write

CARD_NAME = "README.md"
MARKER = "<!-- written by prefixtune: edits below this line are kept only if you remove this line -->"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_METHOD_TAGS = {"prefix": "prefix-tuning", "prompt": "prompt-tuning", "ptuning_v2": "p-tuning-v2"}


def is_hub_id(name: str | None) -> bool:
    """``owner/name`` that is not a path on this machine."""
    return bool(name) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def _pipeline(config: Any, can_generate: bool) -> str | None:
    head = getattr(config, "head", None)
    if head is not None:
        return "token-classification" if head.task == "token-classification" else "text-classification"
    return "text-generation" if can_generate else None


def model_card(config: Any, count: Any, base_model: str | None, tags: list[str] | None = None,
               can_generate: bool = True) -> str:
    """The card's text for adapter ``config`` with parameter ``count`` on ``base_model``."""
    from huggingface_hub import ModelCardData  # a dependency of transformers

    hub_base = base_model if is_hub_id(base_model) else None
    all_tags = ["prefixtune", _METHOD_TAGS.get(config.method, config.method)] + list(tags or [])
    data = ModelCardData(library_name="prefixtune", base_model=hub_base, pipeline_tag=_pipeline(config, can_generate),
                         tags=list(dict.fromkeys(all_tags)))
    load_base = hub_base or "<the base model's hub id or local path>"
    options = ", ".join(f"{k}={v!r}" for k, v in config.to_dict().items())
    return f"""---
{data.to_yaml()}
---
{MARKER}

# A {_METHOD_TAGS.get(config.method, config.method)} adapter{f" for {base_model}" if base_model else ""}

Trained with [prefixtune](https://pypi.org/project/prefixtune/): the base model stays frozen; this
adapter holds {count.trainable:,} trainable parameters ({count.trainable_percent:.3f}% of the base
model's {count.base:,}) and stores {count.stored:,} for inference after folding.

- Method: `{config.method}`
- Base model: `{base_model or "not recorded"}`
- Options: `{options}`

## Use

```python
import prefixtune as pt
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{load_base}")  # the class of the base model's task
model = pt.PrefixModel.from_pretrained(base, "<this repository's id or directory>")
```
"""


def write_card(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` as ``path/README.md`` unless a README.md there was written by someone else.
    Returns whether it was written."""
    file = Path(path) / CARD_NAME
    if file.is_file() and MARKER not in file.read_text(encoding="utf-8", errors="replace"):
        return False
    atomic_write(file, text.encode())
    return True
