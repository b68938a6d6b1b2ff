"""No hub traffic, ever: the Hugging Face offline switches, set before anything reads them.

`huggingface_hub` and `transformers` read HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE once, when they are
first imported, so setting them later (as load_model once did) is too late: a hub model name then
costs seconds of retried requests before failing. `interp/__init__.py` imports this module first,
before torch, transformers or TransformerLens, so every entry point (the CLI, `python -m
experiments.X`, `import interp`) is offline from its first line. Where a caller imported those
libraries before interp, `force_offline()` also flips the constants they already read.
"""

from __future__ import annotations

import os
import sys

OFFLINE_VARIABLES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def force_offline() -> None:
    """Set the offline variables, and the module constants of hub libraries imported before us."""
    os.environ.update(OFFLINE_VARIABLES)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
        constants.HF_HUB_DISABLE_TELEMETRY = True
    hub_utils = sys.modules.get("transformers.utils.hub")
    if hub_utils is not None and hasattr(hub_utils, "_is_offline_mode"):
        hub_utils._is_offline_mode = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None and hasattr(datasets_config, "HF_HUB_OFFLINE"):
        datasets_config.HF_HUB_OFFLINE = True


force_offline()
