"""prefixtune: prefix tuning, prompt tuning and P-tuning v2 for Hugging Face transformers."""

from .attention import PrefixAttention, prefix_attention
from .batch import PrefixBatch
from .checkpoint import CheckpointError, load
from .config import ConfigError, PrefixConfig
from .hf import SUPPORTED_FAMILIES, UnsupportedModelError
from .layout import ShapeMismatchError
from .model import PrefixModel, wrap
from .params import ParameterCount, count_parameters
from .peft_interop import from_peft
from .prompt import PromptConfig
from .ptuning_v2 import PTuningV2Config

__all__ = [
    "CheckpointError", "ConfigError", "ParameterCount", "PrefixAttention", "PrefixBatch", "PrefixConfig",
    "PrefixModel", "PromptConfig", "PTuningV2Config", "SUPPORTED_FAMILIES", "ShapeMismatchError", "UnsupportedModelError", "count_parameters", "from_peft",
    "load", "prefix_attention", "wrap",
]
__version__ = "0.1.0"
