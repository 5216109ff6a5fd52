"""The import path of the product brief (``from qwen3_multimodal import Pipeline``): a thin alias of
transformers_qwen3."""

import transformers_qwen3 as _package
from transformers_qwen3 import *  # noqa: F403
from transformers_qwen3 import __all__  # noqa: F401


def __getattr__(name):
    # lazy names of transformers_qwen3 (Pipeline) resolve there
    return getattr(_package, name)
