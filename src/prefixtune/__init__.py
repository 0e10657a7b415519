"""prefixtune: prefix tuning, prompt tuning and P-tuning v2 for Hugging Face transformers."""

from prefixtune.core.attention import PrefixAttention, prefix_attention
from prefixtune.core.batch import PrefixBatch
from prefixtune.io.checkpoint import CheckpointError, load
from prefixtune.core.config import ConfigError, PrefixConfig
from prefixtune.hf.boundary import SUPPORTED_FAMILIES, UnsupportedModelError
from prefixtune.core.layout import ShapeMismatchError
from prefixtune.runtime.model import PrefixModel, wrap
from prefixtune.methods.params import ParameterCount, count_parameters
from prefixtune.io.peft import from_peft
from prefixtune.core.prompt import PromptConfig
from prefixtune.methods.ptuning_v2 import PTuningV2Config

__all__ = [
    "CheckpointError", "ConfigError", "ParameterCount", "PrefixAttention", "PrefixBatch", "PrefixConfig",
    "PrefixModel", "PromptConfig", "PTuningV2Config", "SUPPORTED_FAMILIES", "ShapeMismatchError", "UnsupportedModelError", "count_parameters", "from_peft",
    "load", "prefix_attention", "wrap",
]
__version__ = "0.1.0"
