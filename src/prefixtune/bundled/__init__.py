"""The bundled pretrained models (SmolLM2-135M, all-MiniLM-L6-v2) and loading any model by name."""

from prefixtune.bundled.models import BUNDLED, ModelNotFoundError, cache_dir, load_model, resolve

__all__ = ["BUNDLED", "ModelNotFoundError", "cache_dir", "load_model", "resolve"]
