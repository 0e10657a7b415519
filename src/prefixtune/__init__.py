"""prefixtune: prefix tuning, prompt tuning and P-tuning v2 for Hugging Face transformers."""

from .attention import PrefixAttention, prefix_attention
from .batch import PrefixBatch
from .checkpoint import CheckpointError, load
from .config import ConfigError, PrefixConfig
from .hf import SUPPORTED_FAMILIES, UnsupportedModelError
from .layout import ShapeMismatchError
from .model import PrefixModel, wrap
from .params import ParameterCount, count_parameters

__all__ = [
    "CheckpointError", "ConfigError", "ParameterCount", "PrefixAttention", "PrefixBatch", "PrefixConfig",
    "PrefixModel", "SUPPORTED_FAMILIES", "ShapeMismatchError", "UnsupportedModelError", "count_parameters",
    "load", "prefix_attention", "wrap",
]
__version__ = "0.1.0"
