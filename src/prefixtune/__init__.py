"""prefixtune: prefix tuning, prompt tuning and P-tuning v2 for Hugging Face transformers."""

from prefixtune.core.attention import PrefixAttention, prefix_attention
from prefixtune.core.batch import PrefixBatch
from prefixtune.core.config import ConfigError
from prefixtune.core.layout import ShapeMismatchError
from prefixtune.hf.boundary import SUPPORTED_FAMILIES, UnsupportedModelError
from prefixtune.io.files import CheckpointError
from prefixtune.methods import REGISTRY as METHODS
from prefixtune.methods.head import HeadConfig
from prefixtune.methods.params import ParameterCount, count_parameters
from prefixtune.methods.prefix import PrefixConfig
from prefixtune.methods.prompt import PromptConfig
from prefixtune.methods.ptuning_v2 import PTuningV2Config
from prefixtune.runtime.bank import AdapterBank
from prefixtune.runtime.model import PrefixModel, from_peft, load, wrap

__all__ = [
    "AdapterBank", "CheckpointError", "ConfigError", "HeadConfig", "METHODS", "ParameterCount", "PrefixAttention", "PrefixBatch",
    "PrefixConfig", "PrefixModel", "PromptConfig", "PTuningV2Config", "SUPPORTED_FAMILIES", "ShapeMismatchError",
    "UnsupportedModelError", "count_parameters", "from_peft", "load", "prefix_attention", "wrap",
]
__version__ = "0.1.0"
