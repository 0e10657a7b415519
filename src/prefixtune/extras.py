"""Optional dependencies behind pip extras, imported where they are used.

The core (``import prefixtune``, ``wrap``, forward/generate, save/load, PEFT files, the adapter
bank) needs only torch, transformers and safetensors. Training, plotting, metrics, the server,
the bundled GGUF model, LoRA and hub data sets need more; :func:`require` imports such a module
and, when it is not installed, says which extra brings it::

    accelerate = require("accelerate", "train", "training")
    # ModuleNotFoundError: prefixtune's training needs accelerate: pip install 'prefixtune[train]'

The extras themselves are declared in ``pyproject.toml`` (``[project.optional-dependencies]``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: import name -> pip distribution name, where the two differ
DISTRIBUTIONS = {"yaml": "pyyaml", "rouge_score": "rouge-score"}


def distribution(module: str) -> str:
    """The pip distribution that provides ``module`` (``"yaml.loader"`` -> ``"pyyaml"``)."""
    top = module.partition(".")[0]
    return DISTRIBUTIONS.get(top, top)


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import and return ``module`` (dotted names allowed), naming the extra if it is missing.

    Args:
        module: what to import, e.g. ``"matplotlib.pyplot"``.
        extra: the pip extra of prefixtune that installs it, e.g. ``"train"``.
        feature: what needs it, for the message (``"prefixtune's <feature> needs ..."``).

    Raises:
        ModuleNotFoundError: ``module`` or one of its parent packages is not installed; the
            message is ``prefixtune's <feature> needs <distribution>: pip install 'prefixtune[<extra>]'``.
            A module missing *inside* an installed package (a broken install) keeps its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise ModuleNotFoundError(f"prefixtune's {feature} needs {distribution(module)}: "
                                  f"pip install 'prefixtune[{extra}]'", name=e.name) from e
